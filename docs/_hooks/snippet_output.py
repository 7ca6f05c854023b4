"""MkDocs build hook: show what a page's Python blocks really print.

``<!-- prec:output -->`` on the line after a ```` ```python ```` block's closing fence is replaced by that block's
standard output, captured while building: the page's Python blocks run in order in one fresh interpreter (the way
the documentation tests run them), with only prec's own plugins loaded, in an empty working directory. A page
without the marker runs nothing. A block that fails is a build warning, which fails a strict build.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.prec_snippet_output")

OUTPUT_MARKER = "<!-- prec:output -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)(?P<attrs>[^\n`]*)$")
SKIP = re.compile(r"^\s*<!-- skip-snippet:(?P<reason>.*?)-->\s*$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
SENTINEL = "----- prec docs block {index} -----"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if OUTPUT_MARKER not in markdown:
        return markdown
    lines = markdown.splitlines()
    blocks = _python_blocks(lines)  # (index of the closing fence line, code)
    try:
        outputs = _run(blocks)
    except RuntimeError as error:
        log.warning("%s: %s", page.file.src_uri, error)
        return markdown.replace(OUTPUT_MARKER, "**(output unavailable: a block failed)**")
    by_end = {end: output for (end, _), output in zip(blocks, outputs, strict=True)}
    result: list[str] = []
    for index, line in enumerate(lines):
        if line.strip() != OUTPUT_MARKER:
            result.append(line)
            continue
        previous = index - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        if previous not in by_end:
            log.warning("%s:%d: %s does not follow a Python block", page.file.src_uri, index + 1, OUTPUT_MARKER)
            continue
        result += ["", "Output:", "", "```text", by_end[previous].rstrip("\n") or "(nothing)", "```"]
    return "\n".join(result) + "\n"


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown page (this hook and the documentation tests read pages the same way)."""

    line: int  # 1-based line of the first code line
    end: int  # 0-based index of the closing fence line
    lang: str
    code: str
    title: str | None
    skip: str | None  # the reason of a ``<!-- skip-snippet: reason -->`` on the line before, if any
    page: str = ""

    @property
    def runs(self) -> bool:
        return self.lang in ("python", "py") and self.skip is None


def parse_blocks(lines: list[str]) -> list[Block]:
    """Every fenced block of a page's lines, with its language, title and opt-out marker."""
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence = match["indent"], match["fence"]
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        skip = SKIP.match(previous)
        title = TITLE.search(match["attrs"])
        body: list[str] = []
        index += 1
        start = index + 1
        while index < len(lines) and lines[index].strip() != fence:
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        blocks.append(
            Block(
                line=start,
                end=index,
                lang=match["lang"].lower(),
                code="\n".join(body) + "\n",
                title=title["title"] if title else None,
                skip=skip["reason"].strip() if skip else None,
            )
        )
        index += 1  # the closing fence
    return blocks


def _python_blocks(lines: list[str]) -> list[tuple[int, str]]:
    return [(block.end, block.code) for block in parse_blocks(lines) if block.runs]


def _sibling(name: str) -> Any:
    """Another hook file of this folder, as a module (MkDocs loads hooks by path, not as a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_prec_docs_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(blocks: list[tuple[int, str]]) -> list[str]:
    """Run the blocks in one interpreter, printing a sentinel before each, and split its output by them."""
    parts = []
    for index, (_, code) in enumerate(blocks):
        parts.append(f"print({SENTINEL.format(index=index)!r}, flush=True)\n")
        parts.append(f"exec(compile({code!r}, 'docs block {index}', 'exec'))\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREC_")}
    env.update(_sibling("prec_docs").builtin_env())
    env["PYTHONWARNINGS"] = "ignore"
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [sys.executable, "-c", "".join(parts)],
            capture_output=True,
            text=True,
            cwd=folder,
            env=env,
            timeout=600,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"running the page's Python blocks failed:\n{result.stderr.strip()[-3000:]}")
    outputs = []
    text = result.stdout
    for index in range(len(blocks)):
        start = text.index(SENTINEL.format(index=index)) + len(SENTINEL.format(index=index)) + 1
        following = SENTINEL.format(index=index + 1)
        end = text.index(following) if index + 1 < len(blocks) else len(text)
        outputs.append(text[start:end])
    return outputs
