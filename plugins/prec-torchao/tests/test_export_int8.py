"""prec export --precision int8/int4: torchao's weight-only quantization stored as plain components in
safetensors, read back to torchao's own dequantized values, with a drift a re-computation reproduces."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

pytest.importorskip("torchao.quantization")
from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup, quantize_  # noqa: E402

from prec.checkpoint.export import read_export, unpack_int4  # noqa: E402
from prec.checkpoint.io import atomic_save  # noqa: E402
from prec.cli.app import main  # noqa: E402

SOURCE = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 256)
        self.b = torch.nn.Linear(256, 32)
        self.odd = torch.nn.Linear(32, 8)  # 32 columns: one int4 group
        self.narrow = torch.nn.Linear(8, 4)  # fewer columns than an int4 group: left in float32

    def forward(self, x):
        return self.narrow(self.odd(self.b(torch.relu(self.a(x)))))

def model():
    return Net()

def batch():
    return torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
"""


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "quant_model.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import quant_model

    yield quant_model
    sys.modules.pop("quant_model", None)


def checkpoint_of(net: Any, path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = net.model()
    atomic_save({"state_dict": model.state_dict()}, path)
    return model


def run_export(*args: str) -> str:
    result = CliRunner().invoke(main, ["export", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def torchao_dequantized(model: torch.nn.Module, config: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """What torchao itself makes of the weights (its own ``dequantize()``)."""
    import copy

    quantized = copy.deepcopy(model)
    owners = {name.rsplit(".", 1)[0] for name in names}
    quantize_(quantized, config, filter_fn=lambda layer, fqn: fqn in owners)
    return {name: quantized.get_submodule(name.rsplit(".", 1)[0]).weight.dequantize() for name in names}


def test_int8_stores_int8_values_and_scales_that_torchao_dequantizes_alike(tmp_path: Path, net: Any) -> None:
    model = checkpoint_of(net, tmp_path / "m.ckpt")
    output = tmp_path / "m8.safetensors"
    printed = run_export(str(tmp_path / "m.ckpt"), "--precision", "int8", "--output", str(output),
                         "--model", "quant_model:model", "--batch", "quant_model:batch")  # fmt: skip
    raw = load_file(str(output))
    linears = ["a.weight", "b.weight", "odd.weight", "narrow.weight"]
    for name in linears:
        assert raw[f"{name}.int8_values"].dtype == torch.int8
        assert raw[f"{name}.int8_values"].shape == model.state_dict()[name].shape
        assert raw[f"{name}.scale"].dtype == torch.float32 and name not in raw
    assert raw["a.bias"].dtype == torch.float32
    fp32_bytes = sum(value.numel() * 4 for value in model.state_dict().values())
    assert output.stat().st_size < 0.35 * fp32_bytes  # one byte a weight, plus scales and float32 biases
    state, _ = read_export(output)
    expected = torchao_dequantized(model, Int8WeightOnlyConfig(), linears)
    assert all(torch.equal(state[name], expected[name]) for name in linears)
    record = json.loads(Path(f"{output}.json").read_text())
    assert record["quantized"] == dict.fromkeys(linears, "int8_weight_only")
    assert "quantized weight-only: 4 Linear weights" in printed
    # the drift, recomputed from the raw components with the documented formula
    rebuilt = net.model()
    weights = {
        name: (raw[f"{name}.int8_values"].float() - raw[f"{name}.zero_point"].float()) * raw[f"{name}.scale"]
        for name in linears
    }  # fmt: skip  (one scale per row for int8)
    rebuilt.load_state_dict({**{name: raw[name] for name in model.state_dict() if name in raw}, **weights})
    batch = net.batch()
    with torch.no_grad():
        reference, actual = model(batch).double(), rebuilt(batch).double()
    max_abs = float((actual - reference).abs().max())
    assert record["drift"]["max_abs_error"] == pytest.approx(max_abs, rel=1e-9, abs=0)
    assert record["drift"]["max_rel_error"] == pytest.approx(max_abs / float(reference.abs().max()), rel=1e-9)
    assert 0 < record["drift"]["max_rel_error"] < 0.05


def test_int4_packs_two_values_a_byte_and_leaves_narrow_layers_in_float32(tmp_path: Path, net: Any) -> None:
    model = checkpoint_of(net, tmp_path / "m.ckpt")
    output = tmp_path / "m4.safetensors"
    printed = run_export(str(tmp_path / "m.ckpt"), "--precision", "int4", "--output", str(output),
                         "--model", "quant_model:model", "--batch", "quant_model:batch")  # fmt: skip
    raw = load_file(str(output))
    quantized = ["a.weight", "b.weight", "odd.weight"]
    for name in quantized:
        rows, columns = model.state_dict()[name].shape
        packed = raw[f"{name}.int4_values_packed"]
        assert packed.dtype == torch.uint8 and packed.shape == (rows, columns // 2)
        assert raw[f"{name}.scale"].shape == (rows, columns // 32)
        values = unpack_int4(packed, columns)
        assert int(values.min()) >= -8 and int(values.max()) <= 7
    assert raw["narrow.weight"].dtype == torch.float32  # 8 columns: no group of 32
    state, _ = read_export(output)
    config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    expected = torchao_dequantized(model, config, quantized)
    assert all(torch.equal(state[name], expected[name]) for name in quantized)
    record = json.loads(Path(f"{output}.json").read_text())
    assert record["left_unquantized"] == ["narrow.weight"] and "narrow.weight" in printed
    rebuilt = net.model()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        reference, actual = model(net.batch()).double(), rebuilt(net.batch()).double()
    assert record["drift"]["max_abs_error"] == pytest.approx(float((actual - reference).abs().max()), rel=1e-9)


def test_int4_group_size_is_an_option(tmp_path: Path, net: Any) -> None:
    checkpoint_of(net, tmp_path / "m.ckpt")
    output = tmp_path / "g64.safetensors"
    run_export(str(tmp_path / "m.ckpt"), "--precision", "int4", "--group-size", "64", "--output", str(output),
               "--model", "quant_model:model")  # fmt: skip
    raw = load_file(str(output))
    assert raw["a.weight.scale"].shape == (256, 1) and raw["b.weight.scale"].shape == (32, 4)
    assert json.loads(Path(f"{output}.json").read_text())["left_unquantized"] == ["narrow.weight", "odd.weight"]
