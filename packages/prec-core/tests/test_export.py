"""prec export: the bytes, dtypes and sha256 of the file, the full float32 values of master_weights, and a drift
record that a re-computation reproduces."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.checkpoint.export import pack_int4, read_export, unpack_int4
from prec.checkpoint.io import read_checkpoint
from prec.cli.app import main

MODEL_SOURCE = """
import torch
import prec


class ExportNet(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 256)
        self.norm = torch.nn.LayerNorm(256)
        self.b = torch.nn.Linear(256, 32)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def model():
    return ExportNet()


def batch():
    return torch.randn(16, 64, generator=torch.Generator().manual_seed(7))


def not_a_module():
    return 3
"""


@pytest.fixture
def model_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "export_model.py").write_text(textwrap.dedent(MODEL_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import export_model

    yield export_model
    sys.modules.pop("export_model", None)


def train(module: Any, path: Path, master_weights: str = "fp32") -> Path:
    trainer = prec.Trainer(
        accelerator="cpu", precision="bf16-true", precision_options={"master_weights": master_weights},
        max_steps=3, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(module.model(), DataLoader(TensorDataset(torch.randn(48, 64), torch.randn(48, 32)), batch_size=16))
    trainer.save_checkpoint(path)
    return path


def export(*args: str) -> Result:
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def record_of(path: Path) -> dict[str, Any]:
    return json.loads(Path(f"{path}.json").read_text())


def full_values(checkpoint: Path, module: Any) -> dict[str, torch.Tensor]:
    """The float32 values training kept: the precision state's float32 copies, in the model's parameter order."""
    saved = read_checkpoint(checkpoint)
    names = [name for name, _ in module.model().named_parameters()]
    return dict(zip(names, saved["precision_state"]["masters"][0], strict=True))


def test_bf16_is_half_the_bytes_of_fp32_with_the_dtypes_and_sha256_printed(tmp_path: Path, model_module: Any) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt")
    sizes = {}
    for precision, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
        output = tmp_path / f"out-{precision}.safetensors"
        result = export(str(checkpoint), "--precision", precision, "--output", str(output))
        assert result.exit_code == 0, result.output
        sha = hashlib.sha256(output.read_bytes()).hexdigest()
        assert f"sha256: {sha}" in result.output.splitlines()
        assert record_of(output)["sha256"] == sha
        with safe_open(str(output), framework="pt") as handle:
            assert {handle.get_tensor(name).dtype for name in handle.keys()} == {dtype}  # noqa: SIM118
        assert set(record_of(output)["dtypes"].values()) == {str(dtype).removeprefix("torch.")}
        sizes[precision] = output.stat().st_size
    assert 0.45 < sizes["bf16"] / sizes["fp32"] < 0.55, sizes
    assert abs(sizes["fp16"] - sizes["bf16"]) < 256  # the same bytes, only the header names differ


def test_exported_values_are_the_master_weights_not_the_rounded_weights(tmp_path: Path, model_module: Any) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt")
    masters = full_values(checkpoint, model_module)
    stored = read_checkpoint(checkpoint)["state_dict"]
    assert export(str(checkpoint), "--precision", "fp32").exit_code == 0
    exported = load_file(str(tmp_path / "run.fp32.safetensors"))  # the default output name
    for name, master in masters.items():
        assert torch.equal(exported[name], master), name
        assert not torch.equal(exported[name], stored[name].float()), name
    assert export(str(checkpoint), "--precision", "fp16", "--output", "h.safetensors").exit_code == 0
    half = load_file("h.safetensors")
    assert all(torch.equal(half[name], master.half()) for name, master in masters.items())


def test_kahan_exports_weight_plus_compensation(tmp_path: Path, model_module: Any) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt", master_weights="kahan")
    saved = read_checkpoint(checkpoint)
    names = [name for name, _ in model_module.model().named_parameters()]
    compensation = dict(zip(names, saved["precision_state"]["compensation"][0], strict=True))
    assert export(str(checkpoint), "--precision", "fp32", "--output", "k.safetensors").exit_code == 0
    exported = load_file("k.safetensors")
    for name in names:
        assert torch.equal(exported[name], saved["state_dict"][name].float() + compensation[name].float()), name


def test_drift_stored_is_what_a_recomputation_gives(tmp_path: Path, model_module: Any) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt")
    output = tmp_path / "drift.safetensors"
    spec = ("--model", "export_model:model", "--batch", "export_model:batch")
    result = export(str(checkpoint), "--precision", "bf16", "--output", str(output), *spec)
    assert result.exit_code == 0, result.output
    drift = record_of(output)["drift"]
    reference = model_module.model().eval()
    reference.load_state_dict(full_values(checkpoint, model_module))  # every parameter has a float32 copy
    exported = model_module.model().eval().to(torch.bfloat16)
    exported.load_state_dict(load_file(str(output)))
    batch = model_module.batch()
    with torch.no_grad():
        expected, actual = reference(batch).double(), exported(batch.bfloat16()).double()
    max_abs = float((actual - expected).abs().max())
    assert drift["max_abs_error"] == pytest.approx(max_abs, rel=1e-12, abs=0)
    assert drift["max_rel_error"] == pytest.approx(max_abs / float(expected.abs().max()), rel=1e-12, abs=0)
    assert 0 < drift["max_rel_error"] < 0.05  # bf16 weights move the outputs, and not by much
    assert f"max abs {drift['max_abs_error']:.3g}" in result.output


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--precision", "bf16", "--batch", "export_model:batch"], 2, "--batch needs --model"),
        (["--precision", "int8"], 2, "--precision int8 needs --model"),
        (["--precision", "bf16", "--model", "export_model:not_a_module"], 2, "not a torch.nn.Module"),
        (["--precision", "bf16", "--model", "export_model:missing"], 2, "cannot be loaded"),
        (["--precision", "int3"], 2, "'int3' is not one of"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_them(
    tmp_path: Path, model_module: Any, arguments: list[str], code: int, message: str
) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt")
    result = export(str(checkpoint), *arguments)
    assert result.exit_code == code and message in result.output, result.output
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_checkpoint_that_is_not_one_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Path("x")}, tmp_path / "pickled.ckpt")
    for name, message in [("bad.ckpt", "cannot read checkpoint"), ("missing.ckpt", "no checkpoint file")]:
        result = export(str(tmp_path / name), "--precision", "bf16")
        assert result.exit_code == 1 and message in result.output, result.output
    result = export(str(tmp_path / "pickled.ckpt"), "--precision", "bf16")  # the safe reader loads no objects
    assert result.exit_code == 1 and "cannot read checkpoint" in result.output, result.output


def test_the_command_line_prints_the_sha256_of_the_file_it_wrote(tmp_path: Path, model_module: Any) -> None:
    checkpoint = train(model_module, tmp_path / "run.ckpt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "prec", "export", str(checkpoint), "--precision", "bf16", "--output", "cli.safetensors"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    printed = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("sha256:"))
    assert printed == hashlib.sha256((tmp_path / "cli.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("columns", [1, 6, 7, 64])
def test_int4_packing_round_trips_every_value(columns: int) -> None:
    values = torch.randint(-8, 8, (5, columns), dtype=torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (columns + 1) // 2)
    assert torch.equal(unpack_int4(packed, columns), values)
    assert int(pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8))) == 0x78  # low nibble first, two's complement


def test_read_export_refuses_a_file_of_another_format(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(prec.CheckpointError, match="not a prec export"):
        read_export(tmp_path / "plain.safetensors")
