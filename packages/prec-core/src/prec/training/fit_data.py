"""The loaders of one ``fit``: prepared for the run once (the strategy's shard, ``overfit_batches``'s sequential
order, the batch limits) and asked for again every ``reload_dataloaders_every_n_epochs`` epochs, as Lightning
does."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, SequentialSampler

from prec._warnings import warn
from prec.cluster.data import rebuild_dataloader
from prec.errors import PrecWarning
from prec.training.hook_calls import limit_batches, module_override

if TYPE_CHECKING:
    from prec.model.datamodule import StageData
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

__all__ = ["FitLoaders", "validation_wanted"]


def validation_wanted(trainer: TrainerView, model: TrainingModule, data: StageData) -> bool:
    """Lightning's rule: ``fit`` validates only with ``limit_val_batches`` other than 0 and a ``validation_step``;
    otherwise ``val_dataloader()`` is not even called. A validation loader without a ``validation_step`` is
    said, not dropped silently."""
    if trainer.limit_val_batches == 0:
        return False
    if module_override(model, "validation_step") is None:
        if data.defines("val_dataloader"):
            warn(
                f"fit() has a validation loader but {type(model).__name__} has no validation_step: validation is"
                " skipped. Implement validation_step, or leave the validation loader out.",
                PrecWarning,
            )
        return False
    return True


def sequential_for_overfit(loader: Any, kind: str) -> Any:
    """``overfit_batches``: the same batches every epoch. A DataLoader drawing in random order gets a
    ``SequentialSampler`` instead, with a warning (as in Lightning); other loaders are kept as they are."""
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, SequentialSampler):
        return loader
    if not hasattr(loader.dataset, "__len__") or loader.batch_sampler is None:
        return loader  # an iterable dataset: its order is its own
    warn(
        f"overfit_batches is set but the {kind} loader shuffles: prec gives it a SequentialSampler for this fit, so"
        " every epoch sees the same batches.",
        PrecWarning,
    )
    return rebuild_dataloader(loader, SequentialSampler(loader.dataset))  # type: ignore[arg-type]


class FitLoaders:
    """The training and validation loaders of the current ``fit``, each prepared as the run uses it; the epoch at
    which each was last asked for decides when ``reload_dataloaders_every_n_epochs`` asks again."""

    def __init__(self, trainer: TrainerView, data: StageData | None, train: Any, val: Any) -> None:
        self.trainer = trainer
        self.data = data
        self.every = trainer.settings.reload_dataloaders_every_n_epochs
        epoch = trainer.state.current_epoch
        self.train = self._prepare_train(train)
        self.train_epoch: float = epoch
        self.val = self._prepare(val, "validation") if val is not None else None
        # Lightning counts the validation loader as asked for in this epoch only when validation runs in it.
        self.val_epoch: float = epoch if (epoch + 1) % trainer.check_val_every_n_epoch == 0 else -math.inf

    def train_for_epoch(self) -> Any:
        """The training loader of the epoch about to start (asked for again when it is due)."""
        epoch = self.trainer.state.current_epoch
        if self._due(self.train_epoch, epoch):
            self.train_epoch = epoch
            loader = self.data.reload("train_dataloader", worker_rank=self.trainer.global_rank)  # type: ignore[union-attr]
            if loader is not None:
                self.train = self._prepare_train(loader)
        return self.train

    def val_for_epoch(self) -> Any:
        """The validation loader of a validation run about to start (asked for again when it is due)."""
        epoch = self.trainer.state.current_epoch
        if self.val is not None and self._due(self.val_epoch, epoch):
            self.val_epoch = epoch
            loader = self.data.reload("val_dataloader", worker_rank=self.trainer.global_rank)  # type: ignore[union-attr]
            if loader is not None:
                self.val = self._prepare(loader, "validation")
        return self.val

    def _due(self, last: float, epoch: int) -> bool:
        return bool(self.every) and self.data is not None and epoch - last >= self.every

    def _prepare(self, loader: Any, kind: str) -> Any:
        if self.trainer.settings.overfit_batches:
            loader = sequential_for_overfit(loader, kind)
        return self.trainer.strategy.setup_dataloader(loader)

    def _prepare_train(self, loader: Any) -> Any:
        loader = self._prepare(loader, "training")
        trainer = self.trainer
        trainer.state.train_batches = limit_batches(trainer.limit_train_batches, loader)
        trainer.num_training_batches = trainer.state.train_batches
        return loader
