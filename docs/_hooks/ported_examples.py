"""MkDocs build hook: show the ported Lightning examples as the tests run them.

``<!-- prec:ported-example PATH -->`` on a line of its own (PATH relative to ``docs/``, such as
``examples/lightning/gan.py``) becomes the diff a Lightning user makes to port that file and the whole file, both
read from the file while building: the page never holds a copy that could drift from what
``tests/test_lightning_examples.py`` runs.

The diff comes from the file's own ``# was: OLD`` comments: such a line is OLD in Lightning's version (for a
class statement, OLD is the base-class list). A port changes imports and base classes only, so a ``# was:`` on
any other line, or an example with none, is a build warning, which fails a strict build.

Listed after ``snippet_output`` in mkdocs.yml (the build does not run the examples: the tests do) and before
``prec_docs`` (which reports markers it does not know).
"""

from __future__ import annotations

import difflib
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.prec_ported_examples")

MARKER = re.compile(r"^<!-- prec:ported-example (?P<path>\S+) -->[ \t]*$", re.MULTILINE)
WAS = re.compile(r"^(?P<code>[ \t]*\S.*?)[ \t]+# was: (?P<old>.+?)[ \t]*$")
CLASS = re.compile(r"^(?P<head>[ \t]*class \w+\()(?P<bases>.*)(?P<tail>\):)$")
IMPORT = re.compile(r"^[ \t]*(import|from) \S")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"])
    return MARKER.sub(lambda match: _render(docs, match["path"], page.file.src_uri), markdown)


def _render(docs: Path, path: str, where: str) -> str:
    try:
        return example_markdown(docs / path, f"docs/{path}")
    except (OSError, ValueError) as error:
        log.warning("%s: <!-- prec:ported-example %s --> failed: %s", where, path, error)
        return f"**(generated content 'ported-example' failed: {error})**"


def versions(source: str) -> tuple[list[str], list[str]]:
    """Lightning's lines and prec's lines of a ported file, without the ``# was:`` comments."""
    lightning: list[str] = []
    ported: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        match = WAS.match(line)
        if match is None:
            lightning.append(line)
            ported.append(line)
            continue
        code, old = match["code"], match["old"]
        if IMPORT.match(code) and IMPORT.match(old):
            indent = code[: len(code) - len(code.lstrip())]
            lightning.append(indent + old)
        elif (found := CLASS.match(code)) is not None:
            lightning.append(found["head"] + old + found["tail"])
        else:
            raise ValueError(
                f"line {number} ({line.strip()!r}) has a '# was:' comment but is not an import or a class"
                " statement, the only lines a port changes"
            )
        ported.append(code)
    if lightning == ported:
        raise ValueError("no line carries a '# was:' comment, so the file shows no port")
    return lightning, ported


def ported_diff(source: str, name: str) -> str:
    """The unified diff from Lightning's version of the file to prec's, changed lines only."""
    lightning, ported = versions(source)
    lines = difflib.unified_diff(lightning, ported, f"{name} (Lightning)", f"{name} (prec)", n=0, lineterm="")
    return "\n".join(lines)


def example_markdown(path: Path, shown_as: str) -> str:
    source = path.read_text(encoding="utf-8")
    whole = f"```python\n{source.rstrip()}\n```"
    return "\n".join(
        [
            "```diff",
            ported_diff(source, path.name),
            "```",
            "",
            f'??? example "The whole file, as the tests run it: {shown_as}"',
            "",
            textwrap.indent(whole, "    ", lambda line: True),
            "",
        ]
    )
