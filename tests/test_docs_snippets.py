"""The documentation cannot rot: every Python block in docs/ runs, the site builds strictly, and the plugin-author
walk-through works from an empty folder.

Blocks of one page run in order in one namespace, so a later block can use what an earlier one defined. A block
opts out only with ``<!-- skip-snippet: reason -->`` on the line before it (for what this machine cannot have,
such as a CUDA device); the reason must be given and the page must say why in its text.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import prec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MAX_SKIPPED = 5
WALKTHROUGH_PREFIX = "prec-nocache/"


def _hook(name: str) -> Any:
    """A build hook of docs/_hooks as a module (MkDocs loads hooks by path, not as a package)."""
    return load_module(DOCS / "_hooks" / f"{name}.py", f"prec_docs_hook_{name}")


def parse_blocks(page: Path) -> list[Any]:
    """Every fenced block of a Markdown page, parsed as the build hook parses it (``snippet_output.Block``)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    name = str(page.relative_to(DOCS))
    return [replace(block, page=name) for block in _hook("snippet_output").parse_blocks(lines)]


def pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.md") if "_hooks" not in path.parts)


def python_pages() -> list[Path]:
    return [page for page in pages() if any(block.lang in ("python", "py") for block in parse_blocks(page))]


@pytest.fixture
def clean_prec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each page runs in an empty working directory with a fresh registry of prec's own plugins only: the docs
    describe those, and a third-party plugin installed in the same environment must not change what they show."""
    for name in [name for name in os.environ if name.startswith("PREC_")]:
        monkeypatch.delenv(name)
    for name, value in _build_hook().builtin_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    dtype = torch.get_default_dtype()
    prec.reset_registry()
    yield
    prec.reset_registry()
    assert torch.get_default_dtype() == dtype, "a snippet leaked a default-dtype change"


@pytest.mark.parametrize("page", python_pages(), ids=lambda page: str(page.relative_to(DOCS)))
@pytest.mark.usefixtures("clean_prec")
def test_python_snippets_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for block in parse_blocks(page):
        if block.lang not in ("python", "py") or block.skip is not None:
            continue
        source = "\n" * (block.line - 1) + block.code  # tracebacks point at the page's own line numbers
        code = compile(source, f"docs/{block.page}", "exec")
        with warnings.catch_warnings():
            # Emulated bfloat16 on CPUs without native support is expected in examples, not a failure.
            warnings.simplefilter("ignore", prec.PerformanceWarning)
            try:
                exec(code, namespace)  # noqa: S102 - running the documentation is the point
            except BaseException as error:
                error.add_note(
                    f"while running the Python block at docs/{block.page}:{block.line}. The blocks of a page run in"
                    " order in one namespace; a block that cannot run on a CPU-only machine is marked with"
                    " <!-- skip-snippet: reason --> on the line before its fence."
                )
                raise
        ran += 1
    assert ran, f"{page} has Python blocks but none ran"


def test_skipped_snippets_are_few_and_explained() -> None:
    skipped = [block for page in pages() for block in parse_blocks(page) if block.skip is not None]
    assert len(skipped) <= MAX_SKIPPED, [f"{b.page}:{b.line}" for b in skipped]
    for block in skipped:
        assert block.skip, f"docs/{block.page}:{block.line}: skip-snippet needs a reason"
        assert block.lang in ("python", "py"), f"docs/{block.page}:{block.line}: only Python blocks run or skip"


def test_every_python_block_parses() -> None:
    """Skipped blocks too: a block that cannot run here must at least be valid Python."""
    for page in pages():
        for block in parse_blocks(page):
            if block.lang in ("python", "py"):
                compile(block.code, f"docs/{block.page}:{block.line}", "exec")


# -- the plugin-author walk-through ------------------------------------------------------------------------------
def walkthrough_files() -> dict[str, str]:
    blocks = parse_blocks(DOCS / "plugins.md")
    return {b.title: b.code for b in blocks if b.title and b.title.startswith(WALKTHROUGH_PREFIX)}


def test_walkthrough_shows_a_complete_package() -> None:
    files = walkthrough_files()
    assert set(files) >= {
        "prec-nocache/pyproject.toml",
        "prec-nocache/src/prec_nocache/__init__.py",
        "prec-nocache/tests/test_conformance.py",
    }


@pytest.mark.slow
def test_walkthrough_from_empty_folder_to_prec_list(tmp_path: Path) -> None:
    """Write exactly the files the guide shows, install them as a user would, and ask ``prec list``."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the walk-through's build backend) is not installed in this environment")
    from prec.testing import Sandbox

    folder = tmp_path / "empty"
    folder.mkdir()
    for relative, text in walkthrough_files().items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    project = folder / "prec-nocache"

    sandbox = Sandbox.create(tmp_path / "venv")
    sandbox.install(project)
    listed = sandbox.prec("list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    plugin = next((p for p in data["plugins"] if p["name"] == "nocache"), None)
    assert plugin is not None, [p["name"] for p in data["plugins"]]
    assert (plugin["status"], plugin["distribution"]) == ("ok", "prec-nocache")
    assert data["matrix"]["bf16-mixed-nocache"] == ["cpu"]

    table = sandbox.prec("list")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^bf16-mixed-nocache\s", table.stdout, re.MULTILINE), table.stdout

    tests = sandbox.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=str(project))
    assert tests.returncode == 0, tests.stdout + tests.stderr


# -- the ported Lightning examples -------------------------------------------------------------------------------
LIGHTNING_EXAMPLES = DOCS / "examples" / "lightning"  # every file there runs in tests/test_lightning_examples.py


def ported_example_markers() -> dict[str, str]:
    """The examples the pages include, as ``{path relative to docs/: page}``."""
    marker = _hook("ported_examples").MARKER
    return {
        match["path"]: str(page.relative_to(DOCS)) for page in pages() for match in marker.finditer(page.read_text())
    }


def test_the_docs_show_exactly_the_examples_the_tests_run() -> None:
    shown = ported_example_markers()
    run = {path.relative_to(DOCS).as_posix() for path in LIGHTNING_EXAMPLES.glob("*.py")}
    assert set(shown) == run, f"shown but not run: {set(shown) - run}; run but not shown: {run - set(shown)}"
    assert set(shown.values()) == {"porting.md"}


@pytest.mark.parametrize("example", sorted(LIGHTNING_EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_a_ported_example_is_shown_whole_with_its_diff(example: Path) -> None:
    hook = _hook("ported_examples")
    source = example.read_text(encoding="utf-8")
    markdown = hook.example_markdown(example, "docs/examples/lightning/" + example.name)
    shown = [line[4:] for line in markdown.splitlines() if line.startswith("    ")]
    assert [line for line in source.splitlines() if line.strip()] == [line for line in shown if line.strip()][1:-1]

    diff = hook.ported_diff(source, example.name).splitlines()
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    assert "import lightning as L" in removed and "import prec as L" in added
    assert any(line.endswith("(L.LightningModule):") for line in removed)
    code = [line.split("  # was:")[0] for line in source.splitlines()]
    assert all(line in code for line in added), added  # the diff's new side is the file's code
    changed = removed + added
    assert all(line.lstrip().startswith(("import ", "from ", "class ")) for line in changed), changed
    imported = [
        alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for alias in node.names
    ]
    imported += [node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.split(".")[0] in ("lightning", "pytorch_lightning")], imported


def test_a_port_that_changes_more_than_imports_and_classes_fails_the_build() -> None:
    hook = _hook("ported_examples")
    with pytest.raises(ValueError, match="not an import or a class statement"):
        hook.versions("import prec as L  # was: import lightning as L\nx = data()  # was: x = MNIST()\n")
    with pytest.raises(ValueError, match="no line carries"):
        hook.versions("import prec as L\n")
    lightning, ported = hook.versions(
        "import prec as L  # was: import lightning as L\nclass A(L.DataModule):  # was: B\n"
    )
    assert lightning == ["import lightning as L", "class A(B):"] and ported == [
        "import prec as L",
        "class A(L.DataModule):",
    ]


# -- the porting guide and the API reference agree with the code ------------------------------------------------
# Lightning 2.6's Callback hooks: the porting guide says prec.Callback has every one of them.
LIGHTNING_CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end", "on_train_start",
    "on_train_end", "on_validation_start", "on_validation_end", "on_test_start", "on_test_end", "on_predict_start",
    "on_predict_end", "on_exception", "on_save_checkpoint", "on_load_checkpoint", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def _porting_bullet(label: str) -> str:
    """The text of the porting guide's "does not have" bullet that starts with ``- **label**``."""
    text = (DOCS / "porting.md").read_text(encoding="utf-8")
    match = re.search(rf"^- \*\*{re.escape(label)}\*\*(.*?)(?=^- |^#|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"porting.md has no bullet starting with **{label}**"
    return match[1]


def test_callback_has_every_lightning_hook_and_the_guide_says_which_it_adds() -> None:
    from prec.model.callback import CALLBACK_HOOKS

    assert set(CALLBACK_HOOKS) - set(LIGHTNING_CALLBACK_HOOKS) == {"on_train_epoch_completed"}
    assert set(LIGHTNING_CALLBACK_HOOKS) <= set(CALLBACK_HOOKS)
    assert "plus `on_train_epoch_completed`" in (DOCS / "porting.md").read_text(encoding="utf-8")


def test_the_api_reference_lists_every_public_trainer_member() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    match = re.search(r"^::: prec\.trainer\.Trainer\n\s+options:\n\s+members: \[(?P<members>[^\]]*)\]", text, re.M)
    assert match is not None, "api.md lists the Trainer's members explicitly"
    listed = [name.strip() for name in match["members"].split(",")]
    public = {name for name in vars(prec.Trainer) if not name.startswith("_")}
    assert set(listed) == public, f"missing: {public - set(listed)}; not on the Trainer: {set(listed) - public}"


def test_the_trainer_documents_every_argument() -> None:
    import inspect

    documented = set(re.findall(r"^        (\w+):", prec.Trainer.__doc__ or "", re.MULTILINE))
    arguments = {name for name in inspect.signature(prec.Trainer).parameters if name != "unknown"}
    assert documented == arguments


@pytest.mark.usefixtures("clean_prec")
def test_the_trainer_arguments_the_guide_says_prec_lacks_are_refused_by_name() -> None:
    names = re.findall(r"`(\w+)`", _porting_bullet("Trainer arguments"))
    assert len(names) >= 10, names
    for name in set(names) - {"LEFT_OUT"}:
        with pytest.raises(prec.ConfigurationError, match=name):
            prec.Trainer(accelerator="cpu", **{name: None})


def test_the_module_attributes_the_guide_says_prec_lacks_are_absent() -> None:
    from prec.training.hook_calls import UNCALLED_MODULE_HOOKS

    bullet = _porting_bullet("On the module")
    names = re.findall(r"`self\.(\w+)(?:\([^`]*\))?`", bullet)
    assert len(names) >= 10, names
    assert [name for name in names if hasattr(prec.TrainingModule, name)] == []
    for hook in ("backward", "configure_callbacks", "configure_sharded_model"):  # refused when overridden
        assert f"`{hook}`" in bullet and hook in UNCALLED_MODULE_HOOKS, hook


# -- the site ---------------------------------------------------------------------------------------------------
def _docs_tooling_missing() -> str | None:
    missing = [name for name in ("mkdocs", "material", "mkdocstrings_handlers.python") if not _importable(name)]
    return (
        f"docs tooling not installed here ({', '.join(missing)}); run it in the docs environment" if missing else None
    )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    reason = _docs_tooling_missing()
    if reason:
        pytest.skip(reason)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    html = {path.relative_to(site).as_posix(): path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    failed = ("<!-- prec:", "generated content", "output unavailable")
    leftovers = [name for name, text in html.items() if any(mark in text for mark in failed)]
    assert not leftovers, f"unreplaced or failed markers in {leftovers}"
    precision_page = html["precision/index.html"]
    # The guide's support table is the law for prec's built-in packages (plugins such as prec-torchao add names
    # outside it, described on their own pages).
    for name in _hook("prec_docs").registry().matrix():
        assert f"<code>{name}</code>" in precision_page, name
    assert "prec_register_precisions" in html["plugins/index.html"]
    assert "PREC_TRACE_PLUGINS" in html["plugins/index.html"]


# -- generated content ------------------------------------------------------------------------------------------
def _build_hook() -> Any:
    return _hook("prec_docs")


# The support table of the N-bit precision reference, which the built-in plugins must reproduce.
REFERENCE_TABLE = {
    "16-mixed": {"cpu": False, "cuda": True, "xla": False},
    "bf16-mixed": {"cpu": True, "cuda": True, "xla": True},
    "32-true": {"cpu": True, "cuda": True, "xla": True},
    "64-true": {"cpu": True, "cuda": True, "xla": False},
}


@pytest.mark.usefixtures("clean_prec")
def test_generated_support_table_agrees_with_the_reference() -> None:
    table = _build_hook().support_table()
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| `")]
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    columns = [re.match(r"`([^`]+)`", cell)[1] if cell.startswith("`") else cell for cell in header]
    cells = {
        row[0].strip().strip("`"): dict(zip(columns[1:], (c.strip() for c in row[1:]), strict=True)) for row in rows
    }
    for name, expected in REFERENCE_TABLE.items():
        for accelerator, supported in expected.items():
            cell = cells[name][accelerator]
            if supported:
                assert cell.startswith(("yes", "with `prec-")), (name, accelerator, cell)
            else:
                assert cell.startswith("no"), (name, accelerator, cell)
    for name, accelerators in prec.get_registry().matrix().items():
        for accelerator in accelerators:
            assert cells[name][accelerator].startswith("yes"), (name, accelerator)


def test_generated_hookspecs_cover_every_hook() -> None:
    from prec.plugin.manager import HOOK_ORDER

    text = _build_hook().hookspecs_markdown()
    for hook in HOOK_ORDER:
        assert f"### `{hook}`" in text
    assert ":class:" not in text and not re.search(r"(?<!`)``(?!`)", text), "reStructuredText left in the output"
