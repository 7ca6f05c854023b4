"""Callbacks: code that plugs into a Trainer run without living in the model.

The hook names and arguments are Lightning's, so a ported callback keeps its methods. The Trainer calls only the
hooks a callback overrides; :func:`uncalled_overrides` names the overridden hooks a Trainer does not call, so a
run can refuse them instead of ignoring them silently.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from prec.model.module import StepOutput, TrainingModule
    from prec.model.trainer_view import TrainerView


class Callback:
    """Override the hooks you need; the Trainer calls only overridden ones, before the module's own hook."""

    #: A callback that decides on logged metrics (early stopping, checkpointing): as Lightning's "monitoring
    #: callbacks", its ``on_train_epoch_end`` runs after the module's, so a metric the module logs there is seen.
    is_monitoring_callback: ClassVar[bool] = False

    # -- a run's frame ----------------------------------------------------------------------------------------
    def setup(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        """At the start of ``fit``/``validate``/``test``/``predict`` (``stage`` is that name), before the module's
        ``setup``."""

    def teardown(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        """At the end of every run, also when it raised."""

    def on_fit_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Once per ``fit``, after optimizers exist and a checkpoint was restored."""

    def on_fit_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Once per ``fit``, after the last epoch."""

    def on_sanity_check_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before the few validation batches run ahead of training to catch a broken ``validation_step``."""

    def on_sanity_check_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After the sanity validation; its metrics are discarded."""

    # -- training -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before the first training epoch."""

    def on_train_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After the last training epoch."""

    def on_train_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before each training epoch's first batch."""

    def on_train_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After each training epoch and its validation: ``trainer.callback_metrics`` holds the epoch means."""

    def on_train_epoch_completed(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After an epoch's bookkeeping (epoch schedulers stepped, ``current_epoch`` advanced): a checkpoint
        saved here resumes at the start of the next epoch."""

    def on_train_batch_start(self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int) -> None:
        """Before ``training_step`` (the batch is already on the device)."""

    def on_train_batch_end(
        self, trainer: TrainerView, module: TrainingModule, outputs: StepOutput, batch: Any, batch_idx: int
    ) -> None:
        """After the batch's optimizer step (if this batch ended an accumulation window)."""

    def on_before_backward(self, trainer: TrainerView, module: TrainingModule, loss: torch.Tensor) -> None:
        """Before ``backward`` of the (accumulation-divided) loss."""

    def on_after_backward(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After ``backward``: gradients exist (still scaled under a grad scaler)."""

    def on_before_optimizer_step(
        self, trainer: TrainerView, module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Before each optimizer step; gradients are already unscaled, so norms logged here are the true ones."""

    def on_before_zero_grad(
        self, trainer: TrainerView, module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """After the optimizer step, before its gradients are cleared."""

    # -- validation -------------------------------------------------------------------------------------------
    def on_validation_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before each validation run (within ``fit`` or from ``validate``)."""

    def on_validation_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After each validation run; ``trainer.callback_metrics`` holds its epoch means."""

    def on_validation_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before the first validation batch."""

    def on_validation_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After the last validation batch, before the epoch means are taken (values logged here count)."""

    def on_validation_batch_start(
        self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before each ``validation_step``."""

    def on_validation_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: StepOutput,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After each ``validation_step``, with what it returned."""

    # -- test -------------------------------------------------------------------------------------------------
    def on_test_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before ``test``'s first batch."""

    def on_test_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After ``test``; ``trainer.callback_metrics`` holds its epoch means."""

    def on_test_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before the first test batch."""

    def on_test_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After the last test batch, before the epoch means are taken."""

    def on_test_batch_start(
        self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before each ``test_step``."""

    def on_test_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: StepOutput,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After each ``test_step``, with what it returned."""

    # -- predict ----------------------------------------------------------------------------------------------
    def on_predict_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before ``predict``'s first batch."""

    def on_predict_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After ``predict``'s last batch."""

    def on_predict_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Before the first prediction batch."""

    def on_predict_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        """After the last prediction batch."""

    def on_predict_batch_start(
        self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Before each ``predict_step``."""

    def on_predict_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """After each ``predict_step``, with its output."""

    # -- failures and checkpoints -----------------------------------------------------------------------------
    def on_exception(self, trainer: TrainerView, module: TrainingModule, exception: BaseException) -> None:
        """When the run raised (also on Ctrl-C), before teardown."""

    def on_save_checkpoint(self, trainer: TrainerView, module: TrainingModule, checkpoint: dict[str, Any]) -> None:
        """Add to (or inspect) the checkpoint dict before it is written."""

    def on_load_checkpoint(self, trainer: TrainerView, module: TrainingModule, checkpoint: dict[str, Any]) -> None:
        """After a checkpoint was restored into the run (its whole dict, to read what ``on_save_checkpoint`` added)."""

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints under this callback's :attr:`state_key` (plain containers and tensors)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when ``fit(ckpt_path=...)`` resumes."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in checkpoints; override (see :meth:`generate_state_key`) when a run
        can hold two instances of the class."""
        return type(self).__qualname__

    def generate_state_key(self, **kwargs: Any) -> str:
        """A state key from the class name and the arguments that tell instances apart (Lightning's format)."""
        return f"{type(self).__qualname__}{kwargs!r}"

    _generate_state_key = generate_state_key  # the name ported Lightning callbacks call


#: Every hook a :class:`Callback` can override (the checkpoint and state methods are not hooks).
CALLBACK_HOOKS: tuple[str, ...] = tuple(
    name for name in vars(Callback) if name.startswith("on_") or name in ("setup", "teardown")
)


def uncalled_overrides(callback: Callback, called: Collection[str]) -> list[str]:
    """The hooks ``callback`` overrides that are not in ``called`` (the hooks a Trainer calls), sorted: a Trainer
    raises on them instead of ignoring an override silently."""
    kind = type(callback)
    return sorted(
        name for name in CALLBACK_HOOKS if name not in called and getattr(kind, name) is not getattr(Callback, name)
    )
