"""On a real GPU (marked ``cuda``: skipped without one). Run by ``plugins/prec-cuda/gpu_check.sh``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.testing.conformance import check_precision
from prec_cuda import CUDAAccelerator

pytestmark = pytest.mark.cuda

EXPECTED = {  # precision -> (parameter dtype, dtype of a Linear's output inside training_step)
    "32-true": (torch.float32, torch.float32),
    "16-mixed": (torch.float32, torch.float16),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "16-true": (torch.float16, torch.float16),
    "bf16-true": (torch.bfloat16, torch.bfloat16),
}


def loader(batches: int = 4, batch_size: int = 32) -> DataLoader:
    torch.manual_seed(0)
    n = batches * batch_size
    return DataLoader(TensorDataset(torch.randn(n, 64), torch.randn(n, 8)), batch_size=batch_size)


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        self.seen: list[tuple[torch.dtype, torch.device, torch.dtype]] = []
        self.losses: list[float] = []
        self.skipped: list[bool] = []
        self.weights: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        self.seen.append((out.dtype, x.device, self.net[0].weight.dtype))
        loss = torch.nn.functional.mse_loss(out.float(), y.float())
        self.losses.append(float(loss))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.skipped.append(self.trainer.precision_plugin.step_skipped)
        self.weights.append(self.net[0].weight.detach().float().cpu())

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_probe_on_a_real_gpu_creates_no_context() -> None:
    code = (
        "import torch, prec; a = prec.get_registry().accelerator('gpu');"
        " print(bool(a.availability()), a.device_count(), torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    available, count, initialized = out.stdout.split()
    assert available == "True" and int(count) == torch.cuda.device_count() >= 1 and initialized == "False"


def test_bf16_probe_matches_the_compute_capability() -> None:
    assert CUDAAccelerator().bf16_supported() == (torch.cuda.get_device_capability()[0] >= 8)


def test_auto_picks_cuda() -> None:
    trainer = prec.Trainer(accelerator="auto", precision="auto")
    assert trainer.accelerator.name == "cuda"
    assert trainer.precision == ("bf16-mixed" if CUDAAccelerator().bf16_supported() else "16-mixed")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fit_at_each_precision(name: str) -> None:
    if name.startswith("bf16") and not CUDAAccelerator().bf16_supported():
        pytest.skip("this GPU has no native bfloat16")
    model = Net()
    trainer = prec.Trainer(accelerator="gpu", devices=1, precision=name, max_epochs=1, enable_progress_bar=False)
    trainer.fit(model, loader())
    param_dtype, compute_dtype = EXPECTED[name]
    assert set(model.seen) == {(compute_dtype, torch.device("cuda", 0), param_dtype)}
    assert all(p.device.type == "cuda" and p.dtype == param_dtype for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(loss)) for loss in model.losses)
    assert not torch.equal(model.weights[0], model.weights[-1])
    predictions = trainer.predict(model, [torch.randn(4, 64)])
    assert predictions[0].dtype == torch.float32 and predictions[0].device.type == "cuda"


def test_init_module_builds_bf16_weights_on_the_gpu_without_a_float32_copy() -> None:
    if not CUDAAccelerator().bf16_supported():
        pytest.skip("this GPU has no native bfloat16")
    trainer = prec.Trainer(accelerator="gpu", precision="bf16-true")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with trainer.init_module():
        layer = torch.nn.Linear(4096, 4096)
    torch.cuda.synchronize()
    assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.bfloat16
    bf16_bytes = (4096 * 4096 + 4096) * 2
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 1.5 * bf16_bytes, f"peak {peak} bytes: a float32 copy ({2 * bf16_bytes} bytes) was made"


def test_16_mixed_recovers_from_real_fp16_overflow() -> None:
    """A loss scale of 2**30 overflows float16 gradients for real: steps are skipped and the scale backs off
    until the gradients are finite, then training proceeds."""
    model = Net()
    trainer = prec.Trainer(
        accelerator="gpu",
        precision="16-mixed",
        precision_options={"init_scale": 2.0**30},
        max_epochs=1,
        enable_progress_bar=False,
    )
    initial = model.net[0].weight.detach().clone()
    trainer.fit(model, loader(batches=48))
    precision = trainer.precision_plugin
    assert model.skipped[0] and torch.equal(model.weights[0], initial)
    assert precision.skipped_steps == sum(model.skipped) >= 1
    assert not model.skipped[-1] and not torch.equal(model.weights[-1], initial)
    assert precision.scaler.get_scale() <= 2.0**30 * 0.5**precision.skipped_steps * 2.0  # backed off per skip
    state = precision.state_dict()
    resumed = prec.get_precision("16-mixed", "gpu")
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == precision.scaler.get_scale()
    assert resumed.skipped_steps == precision.skipped_steps


class ClippedFused(Net):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.norms: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        self.norms.append(float(self.clip_gradients(optimizer, 1.0)))
        optimizer.step()
        optimizer.zero_grad()

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)


def test_fused_adamw_with_clipping_under_16_mixed() -> None:
    model = ClippedFused()
    trainer = prec.Trainer(
        accelerator="gpu",
        precision="16-mixed",
        precision_options={"init_scale": 1024.0},
        max_epochs=1,
        enable_progress_bar=False,
    )
    trainer.fit(model, loader())
    assert trainer.precision_plugin.skipped_steps == 0
    assert all(0 < norm < 1e3 for norm in model.norms)  # true norms, not scaled by 1024
    assert not torch.equal(model.weights[0], model.weights[-1])


def test_half_weights_with_16_mixed_are_refused() -> None:
    model = Net().half()
    trainer = prec.Trainer(accelerator="gpu", precision="16-mixed", max_epochs=1, enable_progress_bar=False)
    with pytest.raises(prec.ConfigurationError, match="Attempting to unscale FP16 gradients"):
        trainer.fit(model, loader())


def test_benchmark_runs_tiny_on_the_gpu(tmp_path: Path) -> None:
    bench = Path(__file__).parents[1] / "benchmarks" / "bench_cuda.py"
    output = tmp_path / "bench.json"
    args = ["--device", "cuda", "--tiny", "--steps", "3", "--warmup", "1", "--output", str(output)]
    subprocess.run([sys.executable, str(bench), *args], check=True, timeout=300)
    assert output.exists()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_conformance_kit(name: str) -> None:
    if name.startswith("bf16") and not CUDAAccelerator().bf16_supported():
        pytest.skip("this GPU has no native bfloat16")
    report = check_precision(name, "cuda")
    assert report.ok, str(report)
