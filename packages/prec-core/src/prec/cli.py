"""The ``prec`` command line: ``prec list`` shows what was discovered and what runs here."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from prec import __version__
from prec.bench import bench_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="prec", message="%(prog)s %(version)s")
def main() -> None:
    """Pluggable precision for PyTorch training."""


main.add_command(bench_command)


def collect() -> dict[str, Any]:
    """Everything ``prec list`` reports, as plain data (the ``--json`` schema)."""
    from prec.plugins import get_registry

    registry = get_registry()
    accelerators = []
    for name, entry in sorted(registry.accelerators.items()):
        try:  # a broken constructor or probe is a reason, not a crash
            accelerator = registry.accelerator(name)
            availability = accelerator.availability()
            available, reason = availability.available, availability.reason or None
            devices = accelerator.device_count() if available else 0
        except Exception as error:  # noqa: BLE001
            available, reason, devices = False, f"{type(error).__name__}: {error}", 0
        accelerators.append(
            {
                "name": name,
                "aliases": list(entry.aliases),
                "available": available,
                "reason": reason,
                "devices": devices,
                "plugin": entry.origin.plugin,
                "distribution": entry.origin.distribution,
            }
        )
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
        for _, entry in sorted(registry.precisions.items())
    ]
    return {
        "version": __version__,
        "plugins": [info.as_dict() for info in registry.plugins.values()],
        "accelerators": accelerators,
        "matrix": registry.matrix(),
        "precisions": precisions,
        "strategies": [
            {"name": name, "plugin": entry.origin.plugin, "description": entry.description}
            for name, entry in sorted(registry.strategies.items())
        ],
        "conflicts": [str(conflict) for conflict in registry.conflicts.values()],
    }


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def list_command(as_json: bool) -> None:
    """Show installed plugins, accelerators and which precisions run on which accelerator."""
    data = collect()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render(data))


def render(data: dict[str, Any]) -> str:
    accelerators = [acc["name"] for acc in data["accelerators"]]
    extra = sorted({acc for accs in data["matrix"].values() for acc in accs} - set(accelerators))
    columns = accelerators + extra
    lines = ["Precisions (x = supported; accelerators marked * are not installed)"]
    header = ["precision"] + [name + ("*" if name in extra else "") for name in columns]
    rows = [
        [name] + ["x" if acc in supported else "-" for acc in columns] for name, supported in data["matrix"].items()
    ]
    lines += _table(header, rows)
    lines += ["", "Accelerators"]
    lines += _table(
        ["name", "aliases", "available", "devices", "from", "reason"],
        [
            [
                acc["name"],
                ",".join(acc["aliases"]) or "-",
                "yes" if acc["available"] else "no",
                str(acc["devices"]),
                acc["distribution"] or acc["plugin"],
                acc["reason"] or "",
            ]
            for acc in data["accelerators"]
        ],
    )
    lines += ["", "Plugins"]
    lines += _table(
        ["name", "distribution", "version", "status", "error or reason"],
        [
            [p["name"], p["distribution"] or "-", p["version"] or "-", p["status"], p["error"] or p.get("reason") or ""]
            for p in data["plugins"]
        ],
    )
    if data["conflicts"]:
        lines += ["", "Conflicts"] + [f"  {conflict}" for conflict in data["conflicts"]]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{width}}}" for width in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * width for width in widths)).rstrip()] + [
        fmt.format(*row).rstrip() for row in rows
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
