"""End-to-end 64-true runs on CPU: the dtype of everything each hook sees, and the default dtype around them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.training.composition import get_registry

F32, F64, C64, C128 = torch.float32, torch.float64, torch.complex64, torch.complex128


def make_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=generator)
    y = torch.randn(8, 1, generator=generator)
    ids = torch.arange(8)
    weights = torch.rand(8, 1, generator=generator).to(torch.float16)  # made lower precision on purpose
    return DataLoader(TensorDataset(x, y, ids, weights), batch_size=4)


class Probe(prec.TrainingModule):
    """Records the dtypes every hook sees, under 64-true."""

    def __init__(self, fail_in: str | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.register_buffer("phase_init", torch.tensor([1.2, 3.4j]))  # complex64 here unless under init_module
        self.born = {"layer": self.layer.weight.dtype, "phase_init": self.phase_init.dtype}
        self.fail_in = fail_in
        self.seen: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.head(torch.ones(x.shape[0], 1, device=x.device)) * self.phase_configured.real.sum()

    def configure_model(self) -> None:
        if self.fail_in == "configure_model":
            raise RuntimeError("configure_model failed")
        if hasattr(self, "head"):
            return
        self.seen["configure_model"] = torch.get_default_dtype()
        self.head = torch.nn.Linear(1, 1)
        self.register_buffer("phase_configured", torch.tensor([1.2, 3.4j]))
        self.born.update(head=self.head.weight.dtype, phase_configured=self.phase_configured.dtype)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def on_fit_start(self) -> None:
        self.seen["on_fit_start"] = torch.get_default_dtype()
        self.seen["weights"] = {name: p.dtype for name, p in self.named_parameters()}
        self.seen["buffers"] = {name: b.dtype for name, b in self.named_buffers()}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.seen["on_train_batch_start"] = torch.get_default_dtype()

    def _step(self, hook: str, batch: Any) -> torch.Tensor:
        x, y, ids, weights = batch
        self.seen[hook] = {
            "default": torch.get_default_dtype(),
            "inputs": (x.dtype, y.dtype, ids.dtype, weights.dtype),
            "new_float": torch.tensor([1.0]).dtype,
            "new_complex": torch.tensor([1.2, 3.4j]).dtype,
            "randn": torch.randn(1).dtype,
        }
        if self.fail_in == hook:
            raise RuntimeError(f"{hook} failed")
        prediction = self(x)
        self.seen[hook]["output"] = prediction.dtype
        return ((prediction - y) ** 2 * weights).mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step("training_step", batch)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._step("validation_step", batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._step("test_step", batch))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._step("predict_step", batch)
        return self(batch[0])

    def on_after_backward(self) -> None:
        self.seen["on_after_backward"] = torch.get_default_dtype()
        self.seen["grads"] = {name: p.grad.dtype for name, p in self.named_parameters()}

    def on_train_epoch_end(self) -> None:
        self.seen["on_train_epoch_end"] = (torch.get_default_dtype(), torch.tensor([1.0]).dtype)


def trainer(**options: Any) -> prec.Trainer:
    return prec.Trainer(accelerator="cpu", precision="64-true", max_epochs=1, enable_progress_bar=False, **options)


def check_step(seen: dict[str, Any]) -> None:
    assert seen["default"] == F64
    assert seen["inputs"] == (F64, F64, torch.int64, torch.float16)  # ids and on-purpose fp16 untouched
    assert seen["new_float"] == seen["randn"] == F64
    assert seen["new_complex"] == C128
    assert seen["output"] == F64


def test_fit_dtypes_in_every_hook() -> None:
    model = Probe()
    assert model.born == {"layer": F32, "phase_init": C64}  # built outside any 64-true context
    fit = trainer()
    fit.fit(model, make_loader(), make_loader())
    seen = model.seen
    assert seen["configure_model"] == F64
    assert model.born["head"] == F64 and model.born["phase_configured"] == C128  # born 64-bit, not cast
    assert set(seen["weights"].values()) == {F64}
    assert seen["buffers"] == {"phase_init": C128, "phase_configured": C128}  # __init__'s complex64 is widened
    assert seen["on_fit_start"] == F32
    assert seen["on_train_batch_start"] == F32  # outside the step
    check_step(seen["training_step"])
    check_step(seen["validation_step"])
    assert seen["on_after_backward"] == F32
    assert set(seen["grads"].values()) == {F64}
    assert seen["on_train_epoch_end"] == (F32, F32)
    state = fit.optimizers[0].state[model.layer.weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == F64
    assert fit.global_step == 2 and torch.isfinite(fit.callback_metrics["loss"])
    assert torch.get_default_dtype() == F32


def test_init_module_builds_float64_and_complex128() -> None:
    fit = trainer()
    with fit.init_module():
        model = Probe()
        assert torch.get_default_dtype() == F64
    assert torch.get_default_dtype() == F32
    assert model.born == {"layer": F64, "phase_init": C128}
    phase = model.phase_init.clone()
    fit.fit(model, make_loader())
    torch.testing.assert_close(model.phase_init, phase)


def test_validate_test_and_predict() -> None:
    model = Probe()
    runner = trainer()
    runner.fit(model, make_loader())
    assert set(runner.validate(model, make_loader())[0]) == {"val_loss"}
    check_step(model.seen["validation_step"])
    assert set(runner.test(model, make_loader())[0]) == {"test_loss"}
    check_step(model.seen["test_step"])
    predictions = runner.predict(model, make_loader())
    check_step(model.seen["predict_step"])
    assert [p.dtype for p in predictions] == [F64, F64]  # 64-true keeps float64 predictions by default
    single = trainer(precision_options={"output_dtype": F32}).predict(model, make_loader())
    assert [p.dtype for p in single] == [F32, F32]
    torch.testing.assert_close(single[0], predictions[0].float())


@pytest.mark.parametrize("fail_in", ["configure_model", "training_step", "validation_step"])
def test_default_dtype_restored_when_a_hook_raises(fail_in: str) -> None:
    with pytest.raises(RuntimeError, match=f"{fail_in} failed"):
        trainer().fit(Probe(fail_in=fail_in), make_loader(), make_loader())
    assert torch.get_default_dtype() == F32


def test_default_dtype_restored_when_init_module_body_raises() -> None:
    fit = trainer()
    with pytest.raises(RuntimeError, match="init failed"), fit.init_module():
        assert torch.get_default_dtype() == F64
        raise RuntimeError("init failed")
    assert torch.get_default_dtype() == F32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_a_real_gpu() -> None:
    """The cuda pair with whichever plugin provides the cuda accelerator (prec-cuda): same dtypes, on the GPU."""
    if "cuda" not in get_registry().accelerators:
        pytest.skip("no cuda accelerator installed (pip install prec-cuda)")
    model = Probe()
    runner = prec.Trainer(accelerator="cuda", devices=1, precision="64-true", max_epochs=1, enable_progress_bar=False)
    runner.fit(model, make_loader())
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert set(model.seen["weights"].values()) == {F64} and set(model.seen["grads"].values()) == {F64}
    check_step(model.seen["training_step"])
    assert model.phase_init.dtype == C128
    assert [p.dtype for p in runner.predict(model, make_loader())] == [F64, F64]
