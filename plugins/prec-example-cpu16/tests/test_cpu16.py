"""The example plugin as its author tests it: conformance in process, then installed the way a user installs it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import prec
from prec.testing import Sandbox, check_precision

PROJECT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = PROJECT.parents[1] / "docs" / "examples" / "train.py"


@pytest.fixture
def cpu16() -> Iterator[ModuleType]:
    """The plugin registered in code, imported from this source tree (or from an installed copy)."""
    sys.path.insert(0, str(PROJECT / "src"))
    try:
        import prec_example_cpu16
    finally:
        sys.path.remove(str(PROJECT / "src"))
    name = prec.register_plugin(prec_example_cpu16)
    yield prec_example_cpu16
    prec.unregister_plugin(name)


def test_registers_16_mixed_on_cpu_and_wins_over_the_gap_note(cpu16: ModuleType) -> None:
    entry = prec.get_registry().precision_entry("16-mixed", "cpu")
    assert entry.factory is cpu16.cpu_16_mixed
    precision = prec.get_precision("16-mixed", accelerator="cpu", init_scale=256.0)
    assert isinstance(precision, prec.MixedPrecision)
    assert precision.compute_dtype == torch.float16 and precision.scaler is not None
    assert precision.scaler.get_scale() == 256.0


def test_passes_the_conformance_kit(cpu16: ModuleType) -> None:
    report = check_precision("16-mixed", "cpu")
    assert report.ok, str(report)


def test_without_the_plugin_16_mixed_on_cpu_is_explained() -> None:
    prec.reset_registry()
    if ("16-mixed", "cpu") in prec.get_registry().precisions:
        pytest.skip("prec-example-cpu16 is installed in this environment")
    with pytest.raises(prec.UnsupportedPrecisionError, match="16-mixed needs a GPU"):
        prec.get_precision("16-mixed", accelerator="cpu")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """A throwaway venv over the current environment with this package pip-installed (not editable)."""
    sandbox = Sandbox.create(tmp_path_factory.mktemp("cpu16") / "venv")
    sandbox.install(PROJECT)
    return sandbox


def test_installed_package_shows_in_prec_list_with_distribution_and_version(installed: Sandbox) -> None:
    result = installed.prec("list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "cpu" in data["matrix"]["16-mixed"]
    [entry] = [p for p in data["precisions"] if (p["name"], p["accelerator"]) == ("16-mixed", "cpu")]
    assert entry["distribution"] == "prec-example-cpu16"
    [plugin] = [p for p in data["plugins"] if p["distribution"] == "prec-example-cpu16"]
    assert (plugin["name"], plugin["version"], plugin["status"]) == ("cpu16", "0.1.0", "ok")


def test_installed_package_trains_and_conforms(installed: Sandbox) -> None:
    train = installed.run(str(TRAIN_SCRIPT), "--precision", "16-mixed", "--accelerator", "cpu", "--epochs", "2")
    assert train.returncode == 0, train.stderr
    assert "trained at 16-mixed on cpu" in train.stdout
    kit = installed.run("-c", "from prec.testing import check_precision; print(check_precision('16-mixed', 'cpu'))")
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert "conforms" in kit.stdout
