"""16-mixed through prec.Trainer, for real on CPU: the precision is built directly for the cpu device (the cuda
factory needs a GPU), and everything the Trainer does with the scaler runs as it does on a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.precision import MixedPrecision, Precision

from .test_scaler import LegacyScalingSGD


def half_mixed(**options: Any) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)


def loader(batches: int = 4) -> DataLoader:
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8 * batches, 4), torch.randn(8 * batches, 2)), batch_size=8)


class Regression(prec.TrainingModule):
    """Records, per batch: the weights after the step, the LR, the loss scale and the gradient norm the hook saw."""

    def __init__(self, inf_at: tuple[int, ...] = (), optimizer: str = "sgd") -> None:  # "sgd", "lbfgs", "legacy"
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 2)
        self.inf_at = inf_at
        self.optimizer_name = optimizer
        self.weights: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.scales: list[float] = []
        self.hook_norms: list[float] = []
        self.skipped: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).float(), y)

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.inf_at:
            self.layer.weight.grad[0, 0] = float("inf")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.hook_norms.append(float(self.layer.weight.grad.norm()))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        precision = self.trainer.precision_plugin
        self.weights.append(self.layer.weight.detach().clone())
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.scales.append(precision.metrics().get("loss_scale", 1.0))
        self.skipped.append(precision.step_skipped)

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "lbfgs":
            return torch.optim.LBFGS(self.parameters())
        if self.optimizer_name == "legacy":
            return LegacyScalingSGD(self.parameters())
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0, fused=self.optimizer_name == "fused")
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(model: prec.TrainingModule, precision: Precision, batches: int = 4, **options: Any) -> prec.Trainer:
    trainer = prec.Trainer(accelerator="cpu", plugins=[precision], max_epochs=1, enable_progress_bar=False, **options)
    trainer.fit(model, loader(batches))
    return trainer


def test_an_inf_step_is_skipped_and_the_scheduler_waits() -> None:
    model = Regression(inf_at=(1,))
    precision = half_mixed(init_scale=1024.0)
    fit(model, precision)
    assert model.skipped == [False, True, False, False]
    assert precision.skipped_steps == 1 and not precision.step_skipped
    assert torch.equal(model.weights[0], model.weights[1])  # the skipped step left the weights alone
    assert not torch.equal(model.weights[1], model.weights[2])  # the next finite step applied
    assert model.scales == [1024.0, 512.0, 512.0, 512.0]
    assert model.lrs == [0.5, 0.5, 0.25, 0.125]  # no scheduler step after the skipped optimizer step
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 3


def test_the_trainer_logs_the_loss_scale_and_skipped_steps() -> None:
    trainer = fit(Regression(inf_at=(1,)), half_mixed(init_scale=1024.0))
    metrics = trainer.callback_metrics
    assert float(metrics["loss_scale"]) == 512.0 and float(metrics["skipped_steps"]) == 1.0


def test_on_before_optimizer_step_sees_true_gradients() -> None:
    scaled = Regression()
    fit(scaled, half_mixed(init_scale=2.0**14), batches=2)
    reference = Regression()
    fit(reference, Precision(), batches=2)
    assert scaled.hook_norms == pytest.approx(reference.hook_norms, rel=1e-2)
    assert all(norm < 100 for norm in scaled.hook_norms)  # not multiplied by 2**14


def test_training_step_returning_none_skips_backward_and_the_scaler() -> None:
    class SometimesNone(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            return None if batch_idx == 1 else super().training_step(batch, batch_idx)

    model = SometimesNone()
    precision = half_mixed(init_scale=256.0, growth_interval=1)
    with pytest.warns(prec.PrecWarning, match="training_step returned None"):
        fit(model, precision, batches=3)
    assert model.scales == [512.0, 512.0, 1024.0]  # grows once per real step: none for the None batch
    assert torch.equal(model.weights[0], model.weights[1]) and precision.skipped_steps == 0
    assert len(model.hook_norms) == 2


def test_gradient_clipping_clips_true_gradients_with_a_fused_optimizer() -> None:
    model = Regression(inf_at=(2,), optimizer="fused")
    precision = half_mixed(init_scale=2.0**12)
    fit(model, precision, gradient_clip_val=0.05)
    assert model.skipped == [False, False, True, False]
    step = (model.weights[1] - model.weights[0]).norm() / model.lrs[0]  # lr * clipped gradient (weight part)
    assert float(step) <= 0.05 * 1.001  # clipped to 0.05 unscaled: a scaled gradient would clip at 0.05/4096
    assert float(step) > 0.05 * 0.1


def test_gradient_clipping_with_a_legacy_scaling_optimizer_is_explained() -> None:
    with pytest.raises(prec.ConfigurationError, match="cannot be unscaled earlier for gradient clipping"):
        fit(Regression(optimizer="legacy"), half_mixed(), gradient_clip_val=1.0)


def test_lbfgs_with_the_scaler_is_refused_at_fit() -> None:
    with pytest.raises(prec.ConfigurationError, match="cannot drive torch.optim.LBFGS"):
        fit(Regression(optimizer="lbfgs"), half_mixed())


def test_half_weights_are_refused_at_fit() -> None:
    model = Regression().half()
    with pytest.raises(prec.ConfigurationError, match="Attempting to unscale FP16 gradients"):
        fit(model, half_mixed())


class ManualClip(prec.TrainingModule):
    """Manual optimization: manual_backward, clip_gradients (true gradients), optimizer.step through the scaler."""

    def __init__(self, inf_at: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 2)
        self.inf_at = inf_at
        self.norms: list[float] = []
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        x, y = batch
        self.manual_backward(torch.nn.functional.mse_loss(self.layer(x).float(), y))
        if batch_idx == self.inf_at:
            self.layer.bias.grad[0] = float("nan")
        self.norms.append(float(self.clip_gradients(optimizer, 0.5)))
        optimizer.step()
        optimizer.zero_grad()
        self.weights.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=0.1, fused=True)


def test_manual_optimization_with_clipping_and_a_nan_step() -> None:
    model = ManualClip(inf_at=2)
    precision = half_mixed(init_scale=4096.0)
    fit(model, precision, batches=4)
    assert precision.skipped_steps == 1 and precision.scaler.get_scale() == 2048.0
    assert torch.equal(model.weights[1], model.weights[2]) and not torch.equal(model.weights[2], model.weights[3])
    assert all(norm < 100 for i, norm in enumerate(model.norms) if i != 2)  # true norms, not scaled by 4096


def test_a_second_fit_with_the_same_precision_continues_the_scale() -> None:
    precision = half_mixed(init_scale=1024.0)
    fit(Regression(inf_at=(0,)), precision, batches=2)
    fit(Regression(inf_at=(0,)), precision, batches=2)
    assert precision.skipped_steps == 2 and precision.scaler.get_scale() == 256.0
