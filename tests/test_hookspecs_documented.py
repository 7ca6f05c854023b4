"""Every hook specification is called by the loader, has a docstring, a test and a documentation entry."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import prec.hookspecs as hookspecs
from prec.plugin.manager import HOOK_ORDER, _Loader
from prec.plugin.registry import Origin

ROOT = Path(__file__).resolve().parents[1]
HOOKSPECS = sorted(
    name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT_NAME}_spec")
)
PROTOCOLS = {
    "prec_register_accelerators": hookspecs.RegisterAccelerator,
    "prec_register_precisions": hookspecs.RegisterPrecision,
    "prec_register_strategies": hookspecs.RegisterStrategy,
}


def _texts(patterns: list[str], exclude: Path | None = None) -> str:
    files = [path for pattern in patterns for path in ROOT.glob(pattern) if path != exclude]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def test_there_are_hookspecs() -> None:
    assert HOOKSPECS == sorted(HOOK_ORDER)  # the loader calls every spec, and nothing else


@pytest.mark.parametrize("hook", HOOKSPECS)
def test_hookspec_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 80, f"{hook} needs a docstring that says how to call register()"
    assert "register(" in doc


@pytest.mark.parametrize("hook", HOOKSPECS)
def test_hookspec_is_exercised_by_a_test(hook: str) -> None:
    tests = _texts(["tests/*.py", "packages/*/tests/*.py", "plugins/*/tests/*.py"], exclude=Path(__file__).resolve())
    assert hook in tests, f"no test implements {hook}"


@pytest.mark.parametrize("hook", HOOKSPECS)
def test_hookspec_is_documented(hook: str) -> None:
    assert hook in _texts(["docs/**/*.md", "README.md"]), f"docs/ never mentions {hook}"


@pytest.mark.parametrize("hook", HOOKSPECS)
def test_documented_register_signature_matches_the_real_callback(hook: str) -> None:
    callbacks = _Loader()._register_callbacks(Origin("signature-check"), [], [])
    documented = inspect.signature(PROTOCOLS[hook].__call__)
    real = inspect.signature(callbacks[hook])
    documented_params = [(p.name, p.kind, p.default) for p in documented.parameters.values() if p.name != "self"]
    assert documented_params == [(p.name, p.kind, p.default) for p in real.parameters.values()]


def test_the_plugin_guide_holds_the_hook_specs_as_prec_hookspecs_says_them() -> None:
    """The hook-spec section of docs/plugins.md is written into the Markdown a reader opens; it must be exactly
    what ``prec.hookspecs`` says (the docs build renders the same text from the same function)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prec_docs", ROOT / "docs" / "_hooks" / "prec_docs.py")
    assert spec is not None and spec.loader is not None
    prec_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prec_docs)
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    begin, end = "<!-- hookspecs:begin -->\n", "\n<!-- hookspecs:end -->"
    assert begin in page and end in page, "docs/plugins.md lost its hook-spec section"
    written = page.split(begin, 1)[1].split(end, 1)[0]
    assert written.strip() == prec_docs.hookspecs_markdown().strip(), (
        "docs/plugins.md's hook specs differ from prec.hookspecs: paste prec_docs.hookspecs_markdown() between"
        " the hookspecs:begin and hookspecs:end comments"
    )
