"""How prec-double plugs in: entry point, names, ``prec list``, and the devices 64-true refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import prec
import prec_double
from prec.cli.app import collect
from prec.training.composition import get_registry


def test_registers_64_true_for_cpu_and_cuda_from_its_distribution() -> None:
    registry = get_registry()
    for accelerator in ("cpu", "cuda"):
        entry = registry.precisions[("64-true", accelerator)]
        assert entry.origin.distribution == "prec-double"
        assert entry.factory is prec_double.double_precision
    assert registry.plugins["double"].status == "ok"
    assert not [acc for name, acc in registry.precisions if name == "64-true" and acc not in ("cpu", "cuda")]


@pytest.mark.parametrize("value", ["64-true", "64", 64])
def test_trainer_accepts_canonical_and_legacy_names(value: object) -> None:
    trainer = prec.Trainer(accelerator="cpu", precision=value, enable_progress_bar=False)
    assert trainer.precision == "64-true"
    assert isinstance(trainer.precision_plugin, prec_double.DoublePrecision)
    assert trainer.precision_plugin.device_type == "cpu"
    assert trainer.precision_plugin.param_dtype == torch.float64


def test_get_precision_for_a_plain_loop() -> None:
    precision = prec.get_precision("64-true", accelerator="cpu", output_dtype=torch.float32)
    assert isinstance(precision, prec_double.DoublePrecision) and precision.output_dtype == torch.float32


def test_unknown_option_is_a_configuration_error() -> None:
    with pytest.raises(prec.ConfigurationError, match="init_scale"):
        prec.Trainer(accelerator="cpu", precision="64-true", precision_options={"init_scale": 2.0})


def test_prec_list_shows_64_true_on_cpu_and_cuda() -> None:
    """The real command in a fresh process: what a user sees after ``pip install prec-double``."""
    command = [sys.executable, "-m", "prec.cli.app", "list"]
    table = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    header = table.splitlines()[1].split()
    row = next(line.split() for line in table.splitlines() if line.startswith("64-true "))
    columns = dict(zip(header, row, strict=True))
    assert columns["cpu"] == "x"
    assert columns.get("cuda", columns.get("cuda*")) == "x"  # cuda* when no cuda accelerator is installed
    data = collect()  # the same data as ``prec list --json``, in this process
    mine = {(p["accelerator"], p["distribution"]) for p in data["precisions"] if p["name"] == "64-true"}
    assert mine == {("cpu", "prec-double"), ("cuda", "prec-double")}


@pytest.mark.parametrize(("name", "device_type"), [("mps", "mps"), ("xla", "xla")])
def test_third_party_device_without_float64_gets_an_explained_error(third_party, name: str, device_type: str) -> None:
    """A plugin registers an accelerator for a device with no float64 (simulated: this machine has neither)."""
    third_party(accelerators=[(name, device_type)])
    with pytest.raises(prec.UnsupportedPrecisionError, match="no float64") as raised:
        prec.Trainer(accelerator=name, precision="64-true", enable_progress_bar=False)
    assert "32-true" in str(raised.value)


@pytest.mark.parametrize(("name", "device_type"), [("mps", "mps"), ("xla", "xla"), ("metal", "mps")])
def test_factory_refuses_a_mapping_onto_a_device_without_float64(third_party, name: str, device_type: str) -> None:
    """Even when another plugin maps 64-true onto such a device with prec-double's own factory."""
    third_party(accelerators=[(name, device_type)], precisions=[("64-true", name, prec_double.double_precision)])
    with pytest.raises(prec.UnsupportedPrecisionError, match=f"device type '{device_type}'.*no float64"):
        prec.Trainer(accelerator=name, precision=64, enable_progress_bar=False)
    with pytest.raises(prec.UnsupportedPrecisionError, match="float64"):
        prec.get_precision("64-true", accelerator=name)


def test_a_third_party_device_with_float64_can_use_the_factory(third_party) -> None:
    """The factory is generic: any accelerator that computes float64 may register 64-true with it."""
    third_party(accelerators=[("vector", "cpu")], precisions=[("64-true", "vector", prec_double.double_precision)])
    trainer = prec.Trainer(accelerator="vector", precision="64-true", enable_progress_bar=False)
    assert isinstance(trainer.precision_plugin, prec_double.DoublePrecision)


def test_plugin_instance_for_another_device_type_is_refused() -> None:
    with pytest.raises(prec.ConfigurationError, match="device type 'cuda'"):
        prec.Trainer(accelerator="cpu", plugins=[prec_double.DoublePrecision(device_type="cuda")])
