"""Without a usable torchao the package says why instead of breaking discovery.

Each case runs in a fresh interpreter (:func:`prec.testing.probe_plugin`) whose path starts with a directory that
hides the real torchao: nothing at all, metadata of an old release, or a ``torchao`` package whose import fails.
"""

from __future__ import annotations

from pathlib import Path

from prec.testing import PluginProbe, probe_plugin, write_distribution_metadata, write_failing_package


def probe(tmp_path: Path, hide: tuple[str, ...] = ()) -> PluginProbe:
    result = probe_plugin(
        tmp_path,
        precision="fp8-mixed",
        precision_options={"emulate": True},
        hide=hide,
        calls={"reason": "prec_torchao:unavailable_reason"},
    )
    assert set(result.plugins.values()) == {"ok"} and "torchao" in result.plugins  # discovery intact
    assert "bf16-mixed" in result.table and "fp8-mixed" in result.table
    return result


def test_not_installed(tmp_path: Path) -> None:
    result = probe(tmp_path, hide=("torchao",))
    reason = result.unavailable_reason("fp8-mixed@cpu", "mxfp8-mixed@cuda", "int8-mixed@cpu")
    assert reason == result.results["reason"]
    assert reason.startswith("torchao is not installed; pip install 'torchao>=0.18.0'")
    assert result.error == f"precision='fp8-mixed' comes from prec-torchao, which cannot run here: {reason}."


def test_too_old(tmp_path: Path) -> None:
    write_distribution_metadata(tmp_path, "torchao", "0.5.0")
    result = probe(tmp_path)
    reason = result.unavailable_reason("fp8-bf16-true@cuda", "fp8-mixed@cpu")
    assert (
        reason == result.results["reason"] and "torchao 0.5.0 is too old (prec-torchao needs torchao>=0.18.0)" in reason
    )


def test_installed_but_broken(tmp_path: Path) -> None:
    write_failing_package(tmp_path, "torchao", "undefined symbol: _ZN3c1017RegisterOperators (built for another torch)")
    result = probe(tmp_path)
    assert result.results["reason"] is None  # found without importing it: the failure shows at selection
    error = result.error or ""
    assert "is installed but failed to import with torch" in error and "undefined symbol" in error, error
    # this torchao has no MXFP8 training files: the MX name says so without importing it, the others do not
    assert result.descriptions["mxfp8-mixed@cpu"].startswith("unavailable: torchao 0.18.0 has no")
    assert "torchao.prototype.moe_training.mxfp8_linear" in result.descriptions["mxfp8-mixed@cuda"]
    assert not result.descriptions["int8-mixed@cpu"].startswith("unavailable")


def test_installed_here() -> None:
    import prec_torchao

    assert prec_torchao.unavailable_reason() is None and prec_torchao.torchao_version() == "0.18.0"
