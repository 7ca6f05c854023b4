"""Without a usable bitsandbytes the package says what to install instead of breaking discovery.

Each case runs in a fresh interpreter (:func:`prec.testing.probe_plugin`) whose path starts with a directory that
hides the real bitsandbytes: nothing at all or metadata of an old release.
"""

from __future__ import annotations

from pathlib import Path

from prec.testing import PluginProbe, probe_plugin, write_distribution_metadata


def probe(tmp_path: Path, hide: tuple[str, ...] = ()) -> PluginProbe:
    return probe_plugin(
        tmp_path,
        precision="bnb-nf4",
        hide=hide,
        calls={"reason": "prec_bnb:unavailable_reason"},
        watch=["bitsandbytes"],
    )


def test_not_installed(tmp_path: Path) -> None:
    result = probe(tmp_path, hide=("bitsandbytes",))
    assert result.plugins["bnb"] == "ok" and "bnb-nf4" in result.table
    reason = result.unavailable_reason("bnb-nf4@cpu", "bnb-int8@cuda")
    assert reason == result.results["reason"] == "bitsandbytes is not installed; pip install 'bitsandbytes>=0.50.2'"
    assert result.error == f"precision='bnb-nf4' comes from prec-bnb, which cannot run here: {reason}."


def test_too_old(tmp_path: Path) -> None:
    write_distribution_metadata(tmp_path, "bitsandbytes", "0.41.0")
    result = probe(tmp_path)
    reason = result.unavailable_reason("bnb-fp4@cpu", "bnb-nf4@cuda")
    assert reason == result.results["reason"]
    assert "bitsandbytes 0.41.0 is too old (prec-bnb needs bitsandbytes>=0.50.2)" in reason


def test_installed_here_and_listing_does_not_import_it(tmp_path: Path) -> None:
    result = probe(tmp_path)
    assert result.results["reason"] is None and result.error is None
    assert result.listed_imports == []  # prec list asked the metadata only
    assert result.descriptions["bnb-nf4@cpu"].startswith("frozen 4-bit NormalFloat Linear weights")
    assert "bnb-int8-training@cpu" not in result.descriptions and "bnb-int8-training@cuda" in result.descriptions
