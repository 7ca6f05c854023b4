"""TrainingModule: a ``torch.nn.Module`` with the step methods and hooks the Trainer calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prec.errors import ConfigurationError

if TYPE_CHECKING:
    from prec.trainer import Trainer

StepOutput = Tensor | Mapping[str, Any] | None


class TrainingModule(torch.nn.Module):
    """Subclass it, implement ``training_step`` and ``configure_optimizers``, and hand it to a Trainer.

    Hooks are no-ops here; the Trainer only calls the ones a subclass overrides, so unused hooks cost nothing.
    """

    #: Set to ``False`` in ``__init__`` to call ``self.manual_backward`` and ``optimizer.step()`` yourself.
    automatic_optimization: bool = True

    # -- set up ---------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build layers here to have them born on the device in the precision's dtype (and sharded, under FSDP).

        Called under the precision's module-init context before ``configure_optimizers``, at the start of every
        ``fit``/``validate``/``test``/``predict``: make it idempotent (return early if the layers exist).
        """

    def configure_optimizers(self) -> Any:
        """Return an optimizer, a list of them, or a dict ``{"optimizer": ..., "lr_scheduler": ...}``."""
        raise ConfigurationError(f"{type(self).__name__} must implement configure_optimizers() to be trained.")

    def setup(self, stage: str) -> None:
        """Called at the start of ``fit``/``validate``/``test``/``predict`` with that stage's name."""

    def teardown(self, stage: str) -> None:
        """Called at the end of every run, also when it raised."""

    # -- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the loss (a tensor or ``{"loss": tensor, ...}``), or ``None`` to skip this batch."""
        raise ConfigurationError(f"{type(self).__name__} must implement training_step(batch, batch_idx).")

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        raise ConfigurationError(f"{type(self).__name__} got validation data but implements no validation_step.")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        raise ConfigurationError(f"{type(self).__name__} got test data but implements no test_step.")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """Defaults to ``self(batch)`` (or ``self(batch[0])`` for ``(inputs, targets)`` batches)."""
        if isinstance(batch, (tuple, list)):
            return self(batch[0])
        return self(batch)

    # -- hooks ----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_epoch_completed(self) -> None:
        """After the epoch's bookkeeping (epoch schedulers stepped, ``current_epoch`` advanced)."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, outputs: StepOutput, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are already unscaled here (under a grad scaler), so norms you log are the true ones."""

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to the checkpoint dict before it is written (plain containers and tensors only)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    # -- trainer access -------------------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        trainer = self.__dict__.get("_prec_trainer")
        if trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer yet.")
        return trainer

    @property
    def device(self) -> torch.device:
        trainer = self.__dict__.get("_prec_trainer")
        if trainer is not None:
            return trainer.strategy.root_device
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def log(
        self,
        name: str,
        value: Tensor | float | int,
        *,
        prog_bar: bool = False,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        logger: bool = True,
        sync_dist: bool | None = None,
        reduce_fx: str = "mean",
        batch_size: int | None = None,
    ) -> None:
        """Record a metric: it appears in ``trainer.callback_metrics``, the metrics file and (``prog_bar``) the
        progress bar. In training steps ``on_step`` defaults to True and ``on_epoch`` to False; in evaluation
        the other way round; with both, the names get ``_step``/``_epoch`` suffixes (as in Lightning).

        The epoch value reduces the epoch's values with ``reduce_fx`` (``"mean"``, ``"sum"``, ``"max"``,
        ``"min"``); the mean is weighted by ``batch_size`` (default: inferred from the batch). Under several
        processes epoch values are reduced across ranks at the epoch's end (``sync_dist=False``: kept per rank);
        ``sync_dist=True`` also reduces each step value, a collective per call. Otherwise this costs a
        dictionary write: nothing is synchronised with the device here."""
        trainer = self.__dict__["_prec_trainer"]
        metrics = trainer._metrics
        if metrics.strategy is None:
            metrics.strategy = trainer.strategy
        metrics.log(name, value, prog_bar, on_step, on_epoch, logger, sync_dist, reduce_fx, batch_size)

    def log_dict(self, metrics: Mapping[str, Tensor | float | int], **kwargs: Any) -> None:
        """``self.log`` for each entry, with the same keyword arguments."""
        for name, value in metrics.items():
            self.log(name, value, **kwargs)

    def optimizers(self) -> Any:
        """The optimizers from ``configure_optimizers`` (one, or a list), wrapped for manual optimization."""
        optimizers = self.trainer._manual_optimizers()
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def lr_schedulers(self) -> Any:
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision (scaled under a grad scaler). Use instead of ``loss.backward()``."""
        self.trainer._manual_backward(loss, *args, **kwargs)

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> Tensor | None:
        """Clip ``optimizer``'s gradients (unscaled first under a grad scaler); returns the total norm."""
        return self.trainer._clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
