"""The ``prec`` command line: ``prec list`` shows what was discovered and what runs here, ``prec env`` what a bug
report needs, ``prec bench`` measures the precisions (see :mod:`prec.cli.bench`).

Warnings raised while a command runs (a broken plugin, an override) are collected and printed by the command on
stderr as ``prec: warning: ...``; a plugin error under ``PREC_STRICT_PLUGINS=1`` ends the command with one line,
``prec: error: ...``, and exit status 1.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import click

from prec._version import __version__
from prec.cli._reporting import reported
from prec.cli.bench import bench_command
from prec.cli.export import export_command
from prec.cli.plan import plan_command
from prec.cli.summary import summary_command

#: Version of the ``prec list --json`` document; raised when a key changes meaning or disappears.
SCHEMA_VERSION = 2
WIDTH = 80


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prec", message="%(prog)s %(version)s")
def main() -> None:
    """Pluggable precision for PyTorch training."""


main.add_command(bench_command)
main.add_command(export_command)
main.add_command(plan_command)
main.add_command(summary_command)


def collect() -> dict[str, Any]:
    """Everything ``prec list`` reports, as plain data (the ``--json`` schema)."""
    from prec.cli.env import environment
    from prec.plugin.registry import override_message
    from prec.training.composition import get_registry

    registry = get_registry()
    accelerators = [_accelerator(registry, name, entry) for name, entry in sorted(registry.accelerators.items())]
    precisions = [
        {
            "name": entry.name,
            "accelerator": entry.accelerator,
            "plugin": entry.origin.plugin,
            "distribution": entry.origin.distribution,
            "version": entry.origin.version,
            "description": entry.description,
            "aliases": list(entry.aliases),
        }
        for name, accelerators_ in registry.matrix().items()
        for entry in (registry.precisions[(name, accelerator)] for accelerator in accelerators_)
    ]
    plugins = sorted(registry.plugins.values(), key=lambda info: (info.name != "prec.core", info.name.lower()))
    return {
        "schema_version": SCHEMA_VERSION,
        "version": __version__,
        "environment": environment(registry, accelerators),
        "plugins": [info.as_dict() for info in plugins],
        "accelerators": accelerators,
        "matrix": registry.matrix(),
        "precisions": precisions,
        "strategies": [
            {"name": name, "plugin": entry.origin.plugin, "description": entry.description}
            for name, entry in sorted(registry.strategies.items())
        ],
        "conflicts": [str(conflict) for conflict in registry.conflicts.values()],
        "overrides": [
            override_message(kind, key, winner, losers)
            for (kind, key), (winner, losers) in sorted(registry.overrides.items())
        ],
        "autoload_disabled": registry.autoload_disabled,
    }


def _accelerator(registry: Any, name: str, entry: Any) -> dict[str, Any]:
    native: bool | None = None
    try:  # a broken constructor or probe is a reason, not a crash
        accelerator = registry.accelerator(name)
        availability = accelerator.availability()
        available, reason = availability.available, availability.reason or None
        devices = accelerator.device_count() if available else 0
        if available:
            import torch

            native = bool(accelerator.supports_dtype(torch.bfloat16))
    except Exception as error:  # noqa: BLE001 - reported in the table
        available, reason, devices = False, f"{type(error).__name__}: {error}", 0
    return {
        "name": name,
        "aliases": list(entry.aliases),
        "available": available,
        "reason": reason,
        "devices": devices,
        "native_bf16": native,
        "plugin": entry.origin.plugin,
        "distribution": entry.origin.distribution,
    }


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--check", is_flag=True, help="Exit with status 1 if a plugin is broken or two plugins conflict.")
def list_command(as_json: bool, check: bool) -> None:
    """Show installed plugins, accelerators and which precisions run on which accelerator."""
    with reported():
        data = collect()
    click.echo(json.dumps(data, indent=2) if as_json else render(data))
    if check:
        broken = [plugin["name"] for plugin in data["plugins"] if plugin["status"] == "error"]
        problems = [f"broken plugin(s): {', '.join(broken)}"] if broken else []
        problems += [f"{len(data['conflicts'])} conflict(s)"] if data["conflicts"] else []
        if problems:
            click.echo(f"prec: check failed: {'; '.join(problems)}", err=True)
            sys.exit(1)


@main.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def env_command(as_json: bool) -> None:
    """Print versions, platform and plugins, to paste into a bug report."""
    with reported():
        data = collect()["environment"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for name, item in value.items():
                click.echo(f"  {name}: {item}")
        else:
            click.echo(f"{key}: {value}")


def render(data: dict[str, Any]) -> str:
    """The tables of ``prec list``, each line at most :data:`WIDTH` columns (long reasons go under a table)."""
    from prec.cli.env import one_line

    lines: list[str] = []
    if not data["accelerators"] or not data["matrix"]:
        lines += _wrap(_no_backend(data), "") + [""]
    accelerators = [acc["name"] for acc in data["accelerators"]]
    extra = sorted({acc for accs in data["matrix"].values() for acc in accs} - set(accelerators))
    columns = accelerators + extra
    lines += ["Precisions (x = supported; accelerators marked * are not installed)"]
    header = ["precision"] + [name + ("*" if name in extra else "") for name in columns]
    rows = [
        [name] + ["x" if acc in supported else "-" for acc in columns] for name, supported in data["matrix"].items()
    ]
    lines += _table(header, rows)
    lines += ["", "Accelerators"]
    lines += _table(
        ["name", "aliases", "available", "devices", "from"],
        [
            [
                acc["name"],
                ",".join(acc["aliases"]) or "-",
                "yes" if acc["available"] else "no",
                str(acc["devices"]),
                acc["distribution"] or acc["plugin"],
            ]
            for acc in data["accelerators"]
        ],
    )
    lines += _notes([(acc["name"], acc["reason"]) for acc in data["accelerators"]])
    lines += ["", "Plugins"]
    plugins = data["plugins"]
    lines += _table(
        ["name", "distribution", "version", "status"],
        [[p["name"], p["distribution"] or "-", p["version"] or "-", p["status"]] for p in plugins],
    )
    lines += _notes([(p["name"], p["error"] or p.get("reason")) for p in plugins])
    for title, items in (("Overrides", data["overrides"]), ("Conflicts", data["conflicts"])):
        if items:
            lines += ["", title] + [line for item in items for line in _wrap(item, "  ")]
    lines += ["", "Environment"] + _wrap(one_line(data["environment"]), "  ")
    return "\n".join(lines)


def _no_backend(data: dict[str, Any]) -> str:
    if data["autoload_disabled"]:
        why = "PREC_DISABLE_PLUGIN_AUTOLOAD is set, so no installed plugin was loaded"
    else:
        why = "only prec-core is installed"
    return (
        f"No backend: {why}. prec-core holds the Trainer and the plugin system; the precisions come from backend"
        " packages. Install one: `pip install prec-cpu` (from a clone: `pip install ./plugins/prec-cpu`),"
        " prec-cuda for NVIDIA GPUs, prec-xla for TPUs."
    )


def _notes(items: list[tuple[str, str | None]]) -> list[str]:
    """``name: reason`` lines under a table, wrapped to the width, for the reasons a column cannot hold."""
    return [line for name, text in items if text for line in _wrap(f"{name}: {text}", "  ", "    ")]


def _wrap(text: str, indent: str, subsequent: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=subsequent if subsequent is not None else indent + "  ",
        break_on_hyphens=False,
    ) or [indent.rstrip()]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt: Callable[..., str] = "  ".join(f"{{:<{width}}}" for width in widths).format
    return [fmt(*header).rstrip(), fmt(*("-" * width for width in widths)).rstrip()] + [
        fmt(*row).rstrip() for row in rows
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
