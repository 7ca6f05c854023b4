"""The same script under ``lightning.Trainer`` and ``prec.Trainer`` sees the same numbers and the same hooks.

Each test builds one module class per framework from the same body (only the base class differs), runs it under
both Trainers on the CPU, and compares what the script observed.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

lightning = pytest.importorskip("lightning.pytorch")

QUIET = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}


def _trainer(framework: str, **kwargs: Any) -> Any:
    """A CPU Trainer of ``framework`` (``"lightning"`` or ``"prec"``) with no logs, bars or checkpoints."""
    arguments = {"accelerator": "cpu", **QUIET, **kwargs}
    if framework == "lightning":
        return lightning.Trainer(**arguments)
    return prec.Trainer(**arguments)


def _base(framework: str) -> type:
    return lightning.LightningModule if framework == "lightning" else prec.TrainingModule


def _callback_base(framework: str) -> type:
    return lightning.Callback if framework == "lightning" else prec.Callback


def _quietly(run: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run()


def _shuffled_dropout_run(framework: str, **trainer_kwargs: Any) -> tuple[list[list[int]], list[float]]:
    """A seeded fit with a shuffled loader and dropout: the first epoch's batch order and losses."""

    class Probe(_base(framework)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
            self.order: list[list[int]] = []
            self.losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y, index = batch
            self.order.append(index.tolist())
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y, _ = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    prec.seed_everything(0)
    x = torch.randn(32, 4)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True), torch.arange(32))
    model = Probe()
    trainer = _trainer(framework, max_epochs=1, **trainer_kwargs)
    _quietly(
        lambda: trainer.fit(
            model, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8, shuffle=True)
        )
    )
    return model.order, model.losses


def test_the_sanity_check_draws_no_number_the_training_run_sees() -> None:
    """The sanity check iterates a shuffled validation loader (a seed drawn from torch's RNG) and runs dropout:
    Lightning isolates the RNG around it, so the first epoch is the one a run without a sanity check sees."""
    lightning_order, lightning_losses = _shuffled_dropout_run("lightning")
    prec_order, prec_losses = _shuffled_dropout_run("prec")
    unchecked_order, unchecked_losses = _shuffled_dropout_run("prec", num_sanity_val_steps=0)
    assert prec_order == lightning_order == unchecked_order
    assert prec_losses == pytest.approx(lightning_losses, rel=1e-6)
    assert prec_losses == unchecked_losses


def _gan_run(framework: str, max_steps: int) -> tuple[int, list[str]]:
    """Manual optimization with two optimizers (the second stepped through a closure): the hook calls in order."""
    calls: list[str] = []

    class Recorder(_callback_base(framework)):  # type: ignore[misc]
        def on_before_backward(self, trainer: Any, module: Any, loss: torch.Tensor) -> None:
            calls.append("callback.on_before_backward")

        def on_after_backward(self, trainer: Any, module: Any) -> None:
            calls.append("callback.on_after_backward")

        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            calls.append("callback.on_before_optimizer_step")

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            calls.append(f"on_train_batch_end global_step={trainer.global_step} outputs={sorted(outputs)}")

    class Gan(_base(framework)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.generator = torch.nn.Linear(4, 1)
            self.discriminator = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            (x,) = batch
            opt_g, opt_d = self.optimizers()
            loss_g = self.generator(x).pow(2).mean()
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()
            calls.append(f"after the first step global_step={self.global_step}")
            loss_d = self.discriminator(x).pow(2).mean()
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            opt_d.step(closure=lambda: calls.append("closure"))
            return {"loss": loss_g.detach(), "extra": 1}

        def on_before_backward(self, loss: torch.Tensor) -> None:
            calls.append("module.on_before_backward")

        def on_after_backward(self) -> None:
            calls.append("module.on_after_backward")

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            calls.append("module.on_before_optimizer_step")

        def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
            return (
                torch.optim.SGD(self.generator.parameters(), lr=0.1),
                torch.optim.SGD(self.discriminator.parameters(), lr=0.1),
            )

    trainer = _trainer(framework, max_steps=max_steps, callbacks=[Recorder()])
    loader = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    _quietly(lambda: trainer.fit(Gan(), loader))
    return trainer.global_step, calls


def test_manual_optimization_calls_the_backward_and_step_hooks_and_counts_steps_as_lightning() -> None:
    """``manual_backward`` runs between ``on_before_backward`` and ``on_after_backward``; ``opt.step()`` runs its
    closure, then ``on_before_optimizer_step`` (callbacks, then the module); each step counts in ``global_step``,
    so two optimizers and ``max_steps=3`` stop after the second batch, at step 4, as in Lightning."""
    lightning_steps, lightning_calls = _gan_run("lightning", max_steps=3)
    prec_steps, prec_calls = _gan_run("prec", max_steps=3)
    assert prec_calls == lightning_calls
    assert prec_steps == lightning_steps == 4
    assert prec_calls.count("module.on_before_optimizer_step") == 4


class Regressor(prec.TrainingModule):
    """Defined at module level, so pickle can find the class."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, width)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_fitted_module_deep_copies_and_pickles_without_its_trainer() -> None:
    """An EMA or best-so-far copy (``copy.deepcopy(model)`` after ``fit``) is a daily idiom; the copy, like
    Lightning's, is attached to no Trainer."""

    model = Regressor()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    copied = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    for other in (copied, restored):
        assert torch.equal(other.net.weight, model.net.weight)
        assert other.hparams == {"width": 8}
        with pytest.raises(RuntimeError, match="not attached to a Trainer"):
            _ = other.trainer
    assert model.trainer is trainer  # the original keeps its Trainer


def _frozen_backbone_modes(framework: str) -> list[tuple[str, bool, bool]]:
    """A backbone put in ``eval()`` before fit, and a head in train mode: each one's mode in the training steps
    and after each validation."""
    seen: list[tuple[str, bool, bool]] = []

    class FineTune(_base(framework)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
            self.head = torch.nn.Linear(4, 1)
            self.backbone.eval()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(("train", self.backbone.training, self.head.training))
            return self.head(self.backbone(batch[0])).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            seen.append(("validate", self.backbone.training, self.head.training))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.head.parameters(), lr=0.1)

    model = FineTune()
    statistics = model.backbone[1].running_mean.clone()
    loader = DataLoader(TensorDataset(torch.randn(8, 4) + 3), batch_size=4)
    trainer = _trainer(framework, max_epochs=2, limit_val_batches=1)
    _quietly(lambda: trainer.fit(model, loader, loader))
    assert torch.equal(model.backbone[1].running_mean, statistics), "the frozen BatchNorm kept its statistics"
    seen.append(("after fit", model.backbone.training, model.head.training))
    return seen


def test_fit_keeps_each_submodules_own_mode_as_lightning_does() -> None:
    assert _frozen_backbone_modes("prec") == _frozen_backbone_modes("lightning")


def test_a_module_in_eval_mode_at_fit_start_is_warned_about() -> None:
    class Frozen(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Frozen().eval()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    with pytest.warns(prec.PrecWarning, match="2 module\\(s\\) are in eval mode"):
        trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4))
    assert not model.training
