"""DoublePrecision on its own: module conversion, inputs, outputs, contexts and bad options."""

from __future__ import annotations

import pytest
import torch

import prec
from prec_double import DoublePrecision, to_double


class ComplexModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.real = torch.nn.Linear(3, 2)
        self.low = torch.nn.Linear(2, 2).to(torch.float16)
        self.spectrum = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
        self.register_buffer("phase", torch.tensor([1.2, 3.4j]))  # complex64 under the float32 default
        self.register_buffer("counts", torch.arange(3))


def test_convert_module_casts_floats_to_float64_and_complex_to_complex128() -> None:
    model = ComplexModel()
    phase = model.phase.clone()
    model.real.weight.grad = torch.ones_like(model.real.weight)
    converted = DoublePrecision().convert_module(model)
    assert converted is model
    assert model.real.weight.dtype == model.real.bias.dtype == torch.float64
    assert model.real.weight.grad.dtype == torch.float64
    assert model.low.weight.dtype == torch.float64
    assert model.spectrum.dtype == torch.complex128 and isinstance(model.spectrum, torch.nn.Parameter)
    assert model.phase.dtype == torch.complex128
    torch.testing.assert_close(model.phase, phase.to(torch.complex128))  # the imaginary part survives
    assert model.counts.dtype == torch.int64


def test_torch_module_casts_do_not_handle_complex() -> None:
    """Why convert_module does not use them: ``.double()`` (Lightning's 64-true) leaves complex64 behind, and
    ``.to(dtype=torch.float64)`` drops the imaginary part."""
    kept = ComplexModel().double()
    assert kept.phase.dtype == torch.complex64
    with pytest.warns(UserWarning, match="discards the imaginary part"):
        dropped = ComplexModel().to(dtype=torch.float64)
    assert dropped.phase.dtype == torch.float64


def test_to_double_leaves_integers_bools_and_doubles_alone() -> None:
    for tensor in (torch.arange(3), torch.tensor([True]), torch.zeros(2, dtype=torch.float64)):
        assert to_double(tensor) is tensor
    assert to_double(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float64


def test_convert_input_casts_only_torch_defaults() -> None:
    precision = DoublePrecision()
    batch = {
        "x": torch.randn(2),
        "z": torch.randn(2, dtype=torch.complex64),
        "ids": torch.arange(2),
        "half": torch.randn(2, dtype=torch.float16),
        "bf16": torch.randn(2, dtype=torch.bfloat16),
        "nested": [(torch.randn(1), 3)],
    }
    out = precision.convert_input(batch)
    assert out["x"].dtype == torch.float64
    torch.testing.assert_close(out["x"], batch["x"].double())
    assert out["z"].dtype == torch.complex128
    torch.testing.assert_close(out["z"], batch["z"].to(torch.complex128))
    assert out["ids"] is batch["ids"]
    assert out["half"] is batch["half"]  # lower precision on purpose: left alone
    assert out["bf16"] is batch["bf16"]
    assert out["nested"][0][0].dtype == torch.float64 and out["nested"][0][1] == 3


def test_convert_inputs_from_widens_what_is_cast() -> None:
    precision = DoublePrecision(convert_inputs_from=[torch.float32, torch.float16])
    assert precision.convert_input(torch.zeros(1, dtype=torch.float16)).dtype == torch.float64


def test_outputs_stay_float64_unless_asked() -> None:
    output = {"y": torch.zeros(2, dtype=torch.float64), "z": torch.zeros(1, dtype=torch.complex128)}
    assert DoublePrecision().convert_output(output)["y"].dtype == torch.float64
    single = DoublePrecision(output_dtype=torch.float32).convert_output(output)
    assert single["y"].dtype == torch.float32 and single["z"].dtype == torch.complex64


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"output_dtype": torch.float16}, "output_dtype"),
        ({"output_dtype": "float32"}, "output_dtype"),
        ({"convert_inputs_from": [torch.int64]}, "floating and complex"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict, match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        DoublePrecision(**options)


@pytest.mark.parametrize("device_type", ["mps", "xla"])
def test_devices_without_float64_are_refused(device_type: str) -> None:
    with pytest.raises(prec.UnsupportedPrecisionError, match="float64"):
        DoublePrecision(device_type=device_type)


def test_tensor_on_a_device_without_float64_is_refused() -> None:
    meta = torch.empty(1, device="meta")
    assert to_double(meta).dtype == torch.float64  # only mps and xla are refused
    with pytest.raises(prec.UnsupportedPrecisionError, match="no float64"):
        to_double(_FakeDeviceTensor())


class _FakeDeviceTensor:
    """Stands in for a tensor on an MPS device (this machine has none): to_double checks the device first."""

    device = torch.device("mps")


@pytest.mark.parametrize("context", ["tensor_init_context", "module_init_context", "forward_context"])
def test_contexts_set_float64_and_restore_on_exception(context: str) -> None:
    precision = DoublePrecision()
    with pytest.raises(RuntimeError, match="boom"), getattr(precision, context)():
        assert torch.get_default_dtype() == torch.float64
        assert torch.tensor([1.2, 3.4j]).dtype == torch.complex128
        assert torch.nn.Linear(1, 1).weight.dtype == torch.float64
        raise RuntimeError("boom")
    assert torch.get_default_dtype() == torch.float32


def test_contexts_restore_the_previous_default_not_float32() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with DoublePrecision().forward_context():
            assert torch.get_default_dtype() == torch.float64
        assert torch.get_default_dtype() == torch.bfloat16
    finally:
        torch.set_default_dtype(previous)
