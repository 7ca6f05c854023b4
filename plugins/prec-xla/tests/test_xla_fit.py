"""Real fits on an XLA device: the XLA CPU backend (``PJRT_DEVICE=CPU``) in the ``xla`` environment, or a TPU.

Every precision is compared with the same fit on the CPU accelerator, and the dtypes inside the step are checked.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.errors import UnsupportedPrecisionError
from prec_xla import detect

_READY = detect.probe()
pytestmark = [
    pytest.mark.xla,
    pytest.mark.skipif(
        not _READY,
        reason=f"needs a working torch_xla and PJRT_DEVICE=CPU or a TPU ({_READY.reason}); run `hatch run xla:test`",
    ),
]

STEPS = 6
# Final-loss tolerance against the CPU accelerator: float32 agrees to rounding; 16-bit formats to their precision.
TOLERANCE = {"32-true": 1e-4, "bf16-mixed": 3e-2, "bf16-true": 5e-2, "16-true": 1e-2}


class Recorder(prec.TrainingModule):
    """A two-layer regression model that records dtypes and losses as the steps see them."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 1)
        self.losses: list[torch.Tensor] = []
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(x)
        self.seen["linear_output"] = hidden.dtype
        return self.out(torch.relu(hidden))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen["device"] = x.device.type  # type: ignore[assignment]
        loss = torch.nn.functional.mse_loss(self(x).float(), y.float())
        self.losses.append(loss.detach())
        return loss

    def on_after_backward(self) -> None:
        self.seen["grad"] = self.hidden.weight.grad.dtype  # type: ignore[union-attr]
        self.seen["weight"] = self.hidden.weight.dtype

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # SGD with momentum: Adam's eps (1e-8) is zero in float16, which turns 16-true's first update into NaN.
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


@pytest.fixture(scope="module")
def data() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 8, generator=generator)
    targets = features @ torch.randn(8, 1, generator=generator) + 0.05 * torch.randn(16, 1, generator=generator)
    return DataLoader(TensorDataset(features, targets), batch_size=16)  # one batch: every step sees the same data


@pytest.fixture(scope="module")
def initial() -> Recorder:
    torch.manual_seed(0)
    return Recorder()


def fit(accelerator: str, precision: str, model: Recorder, loader: DataLoader[Any], **kwargs: Any) -> prec.Trainer:
    trainer = prec.Trainer(
        accelerator=accelerator, precision=precision, max_steps=STEPS, enable_progress_bar=False, **kwargs
    )
    trainer.fit(model, loader)
    return trainer


@pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")  # bf16 on a CPU without native bfloat16
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "16-true"])
def test_fit_matches_the_cpu_accelerator(
    precision: str, initial: Recorder, data: DataLoader[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    on_xla, on_cpu = copy.deepcopy(initial), copy.deepcopy(initial)
    trainer = fit("tpu", precision, on_xla, data)
    fit("cpu", precision, on_cpu, data)
    assert trainer.accelerator.name == "xla" and trainer.strategy.root_device.type == "xla"
    assert on_xla.seen["device"] == "xla"
    expected = {
        "32-true": (torch.float32, torch.float32, torch.float32),
        "bf16-mixed": (torch.bfloat16, torch.float32, torch.float32),  # autocast: bf16 matmuls, fp32 master weights
        "bf16-true": (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        "16-true": (torch.float16, torch.float16, torch.float16),
    }[precision]
    assert (on_xla.seen["linear_output"], on_xla.seen["weight"], on_xla.seen["grad"]) == expected
    assert on_xla.hidden.weight.device.type == "xla"
    xla_losses = torch.stack([loss.cpu().float() for loss in on_xla.losses])
    cpu_losses = torch.stack([loss.float() for loss in on_cpu.losses])
    assert len(xla_losses) == STEPS
    assert xla_losses[-1] < xla_losses[0]  # it trained
    torch.testing.assert_close(xla_losses, cpu_losses, rtol=TOLERANCE[precision], atol=TOLERANCE[precision])


def test_every_optimizer_step_executes_a_graph(initial: Recorder, data: DataLoader[Any]) -> None:
    import torch_xla.debug.metrics as metrics

    metrics.clear_all()
    model = copy.deepcopy(initial)
    fit("xla", "bf16-mixed", model, data)
    executions = metrics.metric_data("ExecuteTime")
    assert executions is not None and executions[0] >= STEPS
    # One graph per step shape, compiled at most twice (the first step creates the momentum), never once per step;
    # an earlier test may already have compiled it (the cache is per process), so zero is fine.
    compilations = metrics.metric_data("CompileTime")
    assert compilations is None or compilations[0] <= 2


@pytest.mark.parametrize(
    ("precision", "reason"),
    [("16-mixed", "TPUs compute in bfloat16, not float16"), ("64-true", "TPUs have no float64 arithmetic")],
)
def test_unsupported_precisions_explain_themselves(precision: str, reason: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match=reason) as caught:
        prec.Trainer(accelerator="tpu", precision=precision)
    assert "Supported on xla: 16-true, 32-true, bf16-mixed, bf16-true" in str(caught.value)


def test_auto_picks_xla_when_pjrt_device_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    trainer = prec.Trainer(accelerator="auto", precision="auto")
    assert trainer.accelerator.name == "xla"
    assert trainer.precision == "32-true" and "XLA CPU backend" in (trainer.auto_precision_reason or "")


def test_init_module_builds_bf16_weights_on_the_device(data: DataLoader[Any]) -> None:
    trainer = prec.Trainer(accelerator="tpu", precision="bf16-true", max_steps=2, enable_progress_bar=False)
    with trainer.init_module():
        model = Recorder()
    assert model.hidden.weight.dtype == torch.bfloat16
    assert model.hidden.weight.device.type == "xla"
    trainer.fit(model, data)
    assert model.seen["linear_output"] == torch.bfloat16


LOAD_ON_CPU = """
import sys, torch
saved = torch.load(sys.argv[1], weights_only=True)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
model.load_state_dict({
    k.replace("hidden", "0").replace("out", "2"): v for k, v in saved["model"].items()
})
assert sum(len(s) for s in saved["optimizer"]["state"].values()) > 0
assert "torch_xla" not in sys.modules
torch.save(model(saved["input"]), sys.argv[2])
"""


def test_checkpoint_from_xla_loads_on_cpu_without_torch_xla(
    initial: Recorder, data: DataLoader[Any], tmp_path: Path
) -> None:
    model = copy.deepcopy(initial)
    trainer = fit("tpu", "bf16-mixed", model, data, strategy="single_xla")
    strategy = trainer.strategy
    state = strategy.module_state_dict(model)
    optimizer_state = strategy.optimizer_state_dict(trainer.optimizers[0])  # type: ignore[attr-defined]
    assert all(tensor.device.type == "cpu" for tensor in state.values())
    moments = [t for s in optimizer_state["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert moments and all(tensor.device.type == "cpu" for tensor in moments)
    probe = torch.randn(4, 8)
    checkpoint, output = tmp_path / "model.pt", tmp_path / "output.pt"
    torch.save({"model": state, "optimizer": optimizer_state, "input": probe}, checkpoint)

    env = {key: value for key, value in os.environ.items() if key != "PJRT_DEVICE"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ON_CPU, str(checkpoint), str(output)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model.eval()
    with torch.no_grad():
        expected = model(probe.to(strategy.root_device)).cpu()
    torch.testing.assert_close(torch.load(output), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "16-true"])
def test_passes_the_conformance_kit(precision: str) -> None:
    testing = pytest.importorskip("prec.testing", reason="prec-core without the conformance kit")
    assert (precision, "xla") in testing.precision_pairs("xla")
    testing.check_precision(precision, "xla")


class Evaluated(Recorder):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x).float(), y.float()))


@pytest.mark.parametrize("strategy", ["auto", "single_xla"])
def test_validation_matches_the_cpu_accelerator(strategy: str, initial: Recorder) -> None:
    import torch_xla.debug.metrics as metrics

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(32, 8, generator=generator)
    loader = DataLoader(TensorDataset(features, features.sum(1, keepdim=True)), batch_size=8)
    model = Evaluated()
    model.load_state_dict(initial.state_dict())
    on_cpu = prec.Trainer(accelerator="cpu", enable_progress_bar=False).validate(copy.deepcopy(model), loader)
    metrics.clear_all()
    trainer = prec.Trainer(accelerator="tpu", strategy=strategy, enable_progress_bar=False)
    assert trainer.strategy.name == "single_xla"  # "auto" picks the accelerator's single-device strategy
    on_xla = trainer.validate(model, loader)
    assert on_xla[0]["val_loss"] == pytest.approx(on_cpu[0]["val_loss"], rel=1e-5)
    executions = metrics.metric_data("ExecuteTime")  # one graph per batch, not one for the whole epoch
    assert executions is not None and executions[0] >= len(loader)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_test_and_predict_with_single_xla(precision: str, initial: Recorder, data: DataLoader[Any]) -> None:
    model = Evaluated()
    model.load_state_dict(initial.state_dict())
    model.test_step = model.validation_step  # type: ignore[method-assign]
    trainer = prec.Trainer(accelerator="tpu", precision=precision, strategy="single_xla", enable_progress_bar=False)
    assert set(trainer.test(model, data)[0]) == {"val_loss"}
    predictions = trainer.predict(model, data)
    assert predictions[0].dtype == torch.float32 and predictions[0].shape == (16, 1)
