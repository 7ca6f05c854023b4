"""MkDocs build hook: fills the generated parts of the docs from the installed prec packages.

A page asks for generated content with an HTML comment on a line of its own:

``<!-- prec:support-table -->``     precision x accelerator table from ``prec.get_registry().matrix()``
``<!-- prec:accelerators -->``      registered accelerators, their aliases and availability on the build machine
``<!-- prec:known-gaps -->``        pairs the support table rules out, and why (``prec.plugin.registry.KNOWN_GAPS``)
``<!-- prec:legacy-names -->``      legacy precision values and their canonical names (``prec.names``)
``<!-- prec:hookspecs -->``         the plugin hook specifications, from ``prec.hookspecs`` docstrings
``<!-- prec:env-vars -->``          the plugin environment variables, from the ``prec.plugin.manager`` docstring
``<!-- prec:strategies -->``        registered strategies with the accelerators and precisions they accept
``<!-- prec:command ARGS -->``      the real output of ``prec ARGS``, run in a subprocess while building
``<!-- prec:link PAGE TEXT -->``    a link to PAGE when that page exists in this build, else TEXT alone
``<!-- prec:only-if PAGE -->``      (anywhere in a line) keep the line only when PAGE exists in this build

Anything that goes wrong (an unknown marker, a failing command, a plugin that fails to load or conflicts) is
logged as a warning, which ``mkdocs build --strict`` turns into a failed build.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shlex
import subprocess
import sys
import warnings
from typing import Any

log = logging.getLogger("mkdocs.plugins.prec_docs")

MARKER = re.compile(r"^<!-- prec:(?P<name>[a-z-]+)(?P<args>[^>]*?)\s*-->[ \t]*$", re.MULTILINE)
ONLY_IF = re.compile(r"^(?P<line>.*)<!-- prec:only-if (?P<page>\S+) -->(?P<rest>.*)$", re.MULTILINE)
INLINE_LINK = re.compile(r"<!-- prec:link (?P<page>\S+) (?P<text>[^>]+?)\s*-->")
# Pages other people write; listed in the navigation only when present, so a missing one never breaks the build.
OPTIONAL_PAGES: dict[str, str] = {"distributed.md": "Distributed training", "hooks.md": "Hooks and callbacks"}

_command_cache: dict[tuple[str, ...], str] = {}
_pages: set[str] = set()  # the Markdown files of this build, as MkDocs collected them


def on_config(config: Any) -> Any:
    _command_cache.clear()
    return config


def on_files(files: Any, config: Any) -> Any:
    """Remember which pages this build has, and list the optional ones that exist in the navigation (before the
    command-line page). Runs after MkDocs collected the files and before it builds the navigation."""
    _pages.clear()
    _pages.update(file.src_uri for file in files.documentation_pages())
    nav = config.get("nav")
    if nav is not None:
        listed = {_nav_file(item) for item in nav}
        extra = [{title: page} for page, title in OPTIONAL_PAGES.items() if page in _pages and page not in listed]
        position = next((i for i, item in enumerate(nav) if _nav_file(item) == "cli.md"), len(nav))
        config["nav"] = nav[:position] + extra + nav[position:]
    return files


def _nav_file(item: Any) -> Any:
    return next(iter(item.values())) if isinstance(item, dict) else item


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = ONLY_IF.sub(
        lambda match: (match["line"] + match["rest"]).rstrip() if match["page"] in _pages else "",
        markdown,
    )
    markdown = INLINE_LINK.sub(lambda match: _link(match["page"], match["text"], page), markdown)
    return MARKER.sub(lambda match: _render(match["name"], match["args"].strip(), page), markdown)


def _render(name: str, args: str, page: Any) -> str:
    where = page.file.src_uri
    try:
        if name == "support-table":
            return support_table()
        if name == "accelerators":
            return accelerator_table()
        if name == "known-gaps":
            return known_gaps()
        if name == "legacy-names":
            return legacy_table()
        if name == "hookspecs":
            return hookspecs_markdown()
        if name == "env-vars":
            return env_vars_table()
        if name == "strategies":
            return strategies_table()
        if name == "command":
            return "```text\n$ prec " + args + "\n" + run_prec(shlex.split(args)) + "\n```"
    except Exception as error:  # noqa: BLE001 - report as a build warning, which fails a strict build
        log.warning("%s: generating <!-- prec:%s %s --> failed: %s: %s", where, name, args, type(error).__name__, error)
        return f"**(generated content {name!r} failed: {error})**"
    log.warning("%s: unknown marker <!-- prec:%s -->", where, name)
    return ""


def _link(target: str, text: str, page: Any) -> str:
    if target in _pages:
        return f"[{text}]({target})"
    return text


# -- the registry -----------------------------------------------------------------------------------------------
def builtin_distributions() -> list[str]:
    """prec's own plugin packages that are installed here: the docs describe these, and only these, so a
    third-party plugin in the same environment (an example, a local experiment) never changes the pages."""
    from importlib.metadata import PackageNotFoundError, distribution

    from prec.plugin.catalogue import ACCELERATOR_PACKAGES, PAIR_PACKAGES

    installed = []
    for name in sorted(set(ACCELERATOR_PACKAGES.values()) | set(PAIR_PACKAGES.values())):
        try:
            distribution(name)
        except PackageNotFoundError:
            continue
        installed.append(name)
    return installed


def builtin_env() -> dict[str, str]:
    """Environment variables that make prec load only the built-in plugins."""
    return {"PREC_LOAD_PLUGINS": ",".join(builtin_distributions())}


def registry() -> Any:
    """The registry of the built-in plugins installed here; plugin failures and conflicts become build warnings."""
    import prec

    saved = {name: value for name, value in os.environ.items() if name.startswith("PREC_")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for name in saved:
                del os.environ[name]
            os.environ.update(builtin_env())
            prec.reset_registry()
            result = prec.get_registry()
        finally:
            for name in [name for name in os.environ if name.startswith("PREC_")]:
                del os.environ[name]
            os.environ.update(saved)
    for warning in caught:
        log.warning("prec plugin problem while building the docs: %s", warning.message)
    for info in result.plugins.values():
        if info.status == "error":
            log.warning("prec plugin %r failed to load while building the docs: %s", info.name, info.error)
    return result


def _columns(reg: Any) -> list[str]:
    """Installed accelerators, then those a built-in package would add, in a stable order."""
    from prec.plugin.catalogue import ACCELERATOR_PACKAGES

    installed = sorted(reg.accelerators, key=lambda name: (name not in ACCELERATOR_PACKAGES, name))
    registered = {accelerator for _, accelerator in reg.precisions}
    builtin = [name for name in ACCELERATOR_PACKAGES if name not in installed]
    others = sorted(registered - set(installed) - set(builtin))
    return installed + builtin + others


def _accelerator_label(reg: Any, name: str) -> str:
    from prec.plugin.catalogue import ACCELERATOR_ALIASES

    entry = reg.accelerators.get(name)
    aliases = (
        entry.aliases
        if entry is not None
        else tuple(alias for alias, target in ACCELERATOR_ALIASES.items() if target == name)
    )
    return f"`{name}`" + (f" ({', '.join(f'`{alias}`' for alias in aliases)})" if aliases else "")


def support_table() -> str:
    """One row per precision, one column per accelerator; a cell names the package that provides the pair."""
    from prec.names import CANONICAL_PRECISIONS
    from prec.plugin.catalogue import KNOWN_GAPS, PAIR_PACKAGES

    reg = registry()
    columns = _columns(reg)
    names = list(CANONICAL_PRECISIONS) + sorted({name for name, _ in reg.precisions} - set(CANONICAL_PRECISIONS))
    lines = [
        "| precision | " + " | ".join(_accelerator_label(reg, column) for column in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in names:
        cells = []
        for column in columns:
            entry = reg.precisions.get((name, column))
            if entry is not None:
                cells.append(f"yes (`{entry.origin.distribution or entry.origin.plugin}`)")
            elif (name, column) in PAIR_PACKAGES:
                cells.append(f"with `{PAIR_PACKAGES[(name, column)]}` (not installed in this build)")
            elif (name, column) in KNOWN_GAPS:
                cells.append("no [^gap]")
            else:
                cells.append("no")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "[^gap]: Ruled out on purpose; see [why some pairs do not exist](#why-some-pairs-do-not-exist)."]
    return "\n".join(lines)


def accelerator_table() -> str:
    from prec.plugin.catalogue import ACCELERATOR_PACKAGES

    reg = registry()
    lines = [
        '| accelerator | aliases | package | `accelerator="auto"` rank | available where these docs were built |',
        "|---|---|---|---|---|",
    ]
    for name in _columns(reg):
        entry = reg.accelerators.get(name)
        if entry is None:
            package = ACCELERATOR_PACKAGES.get(name, "?")
            lines.append(f"| {_accelerator_label(reg, name)} | | `{package}` | | not installed in this build |")
            continue
        availability = reg.accelerator(name).availability()
        status = "yes" if availability else f"no: {availability.reason}"
        aliases = ", ".join(f"`{alias}`" for alias in entry.aliases) or "-"
        package = entry.origin.distribution or entry.origin.plugin
        lines.append(f"| `{name}` | {aliases} | `{package}` | {entry.cls.auto_priority} | {status} |")
    return "\n".join(lines)


def strategies_table() -> str:
    reg = registry()
    lines = ["| strategy | accelerators | precisions | provided by | what it does |", "|---|---|---|---|---|"]
    for name, entry in sorted(reg.strategies.items()):
        accelerators = ", ".join(f"`{a}`" for a in sorted(entry.accelerators)) if entry.accelerators else "any"
        precisions = ", ".join(f"`{p}`" for p in sorted(entry.precisions)) if entry.precisions else "any"
        origin = entry.origin.distribution or entry.origin.plugin
        lines.append(f"| `{name}` | {accelerators} | {precisions} | `{origin}` | {entry.description} |")
    return "\n".join(lines)


def known_gaps() -> str:
    from prec.plugin.registry import KNOWN_GAPS

    return "\n".join(f"- **`{name}` on `{accelerator}`**: {why}." for (name, accelerator), why in KNOWN_GAPS.items())


def legacy_table() -> str:
    from prec.names import _LEGACY_WARN, legacy_names

    warned = {repr(key) if isinstance(key, str) else str(key) for key in _LEGACY_WARN}
    lines = ["| you write | prec uses | warns |", "|---|---|---|"]
    for value, canonical in legacy_names().items():
        warns = "yes, `LegacyPrecisionWarning`" if value in warned else "no"
        lines.append(f"| `precision={value}` | `{canonical}` | {warns} |")
    return "\n".join(lines)


# -- plugin contract --------------------------------------------------------------------------------------------
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """The subset of reStructuredText prec's docstrings use: roles, ``literals`` and ``::`` blocks."""
    text = _ROLE.sub(r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            index += 1
            block: list[str] = []
            while index < len(lines) and (not lines[index].strip() or lines[index].startswith("    ")):
                block.append(lines[index][4:])
                index += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            out += ["", "```text", *block, "```", ""]
            continue
        out.append(line)
        index += 1
    return "\n".join(out)


def hookspecs_markdown() -> str:
    import prec.hookspecs as hookspecs
    from prec.plugin import registry as registry_module
    from prec.plugin.manager import HOOK_ORDER

    protocols = {
        hook: getattr(hookspecs, protocol, None) or getattr(registry_module, protocol, None)
        for hook, protocol in (
            ("prec_register_accelerators", "RegisterAccelerator"),
            ("prec_register_precisions", "RegisterPrecision"),
            ("prec_register_strategies", "RegisterStrategy"),
        )
    }
    parts = [rst_to_markdown(inspect.getdoc(hookspecs) or "")]
    for name in HOOK_ORDER:
        function = getattr(hookspecs, name)
        parts.append(f"### `{name}`")
        parts.append(f"```text\n@prec.hookimpl\ndef {name}{_unquoted(inspect.signature(function))}\n```")
        parts.append(rst_to_markdown(inspect.getdoc(function) or ""))
        register = protocols.get(name)
        if register is not None:
            signature = _unquoted(inspect.signature(register.__call__)).replace("(self, ", "(", 1)
            parts.append(f"The `register` callback:\n\n```text\nregister{signature}\n```")
    return "\n\n".join(parts)


def _unquoted(signature: inspect.Signature) -> str:
    """A signature as source shows it: annotations are strings under postponed evaluation, drop their quotes."""
    text = re.sub(r": '([^']*)'", r": \1", str(signature))
    return re.sub(r"-> '([^']*)'", r"-> \1", text)


def env_vars_table() -> str:
    """The ``PREC_*`` variables, parsed from the documented list in ``prec.plugin.manager``."""
    from prec.plugin import manager as plugins

    rows = re.findall(r"^``(PREC_[A-Z_]+)=?([^`]*)``\s+(.+)$", plugins.__doc__ or "", re.MULTILINE)
    if not rows:
        raise ValueError("prec.plugin.manager documents no PREC_* environment variables")
    lines = ["| variable | example | effect |", "|---|---|---|"]
    for name, example, effect in rows:
        lines.append(f"| `{name}` | `{name}={example}` | {rst_to_markdown(effect.strip())} |")
    return "\n".join(lines)


# -- the command line -------------------------------------------------------------------------------------------
def run_prec(args: list[str]) -> str:
    """Run ``prec ARGS`` in a fresh interpreter (a clean registry, no state of this build) and return stdout."""
    key = tuple(args)
    if key not in _command_cache:
        env = {name: value for name, value in os.environ.items() if not name.startswith("PREC_")}
        env.update(COLUMNS="100", **builtin_env())
        code = "import sys; from prec.cli.app import main; sys.exit(main(prog_name='prec'))"
        result = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"`prec {' '.join(args)}` exited with {result.returncode}: {result.stderr.strip()}")
        if result.stderr.strip():  # warnings (emulated bf16 in prec bench); the page shows stdout only
            log.info("`prec %s` wrote to stderr while building the docs: %s", " ".join(args), result.stderr.strip())
        _command_cache[key] = result.stdout.rstrip()
    return _command_cache[key]
