"""What the code under the Trainer reads from it, as a Protocol.

The model, the loops and the callbacks are given the running :class:`prec.Trainer`, but they sit on floors below
it and never import it, not even for type hints: they are typed against this view of it. ``prec.Trainer``
satisfies it; so does any object with these attributes.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["TrainerView"]


class TrainerView(Protocol):
    """The running Trainer's settings, selected parts and loop state (see :class:`prec.Trainer` for each)."""

    # selected parts (objects from the floors above the model: typed loosely on purpose)
    accelerator: Any
    strategy: Any
    precision_plugin: Any
    registry: Any
    auto_precision_reason: str | None
    callbacks: list[Any]
    datamodule: Any
    state: Any
    settings: Any
    config: Any
    # the run's settings
    max_epochs: int | None
    min_epochs: int | None
    max_steps: int
    min_steps: int | None
    limit_train_batches: int | float | None
    limit_val_batches: int | float | None
    limit_test_batches: int | float | None
    limit_predict_batches: int | float | None
    check_val_every_n_epoch: int
    val_check_interval: int | float | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str | None
    accumulate_grad_batches: int
    fast_dev_run: int
    deterministic: Any
    enable_progress_bar: bool
    enable_checkpointing: bool
    enable_model_summary: bool
    default_root_dir: Path
    log_sink: Any
    logger: Any
    # batches per epoch of the current run's loops
    num_training_batches: float | None
    num_val_batches: float | None
    num_test_batches: float | None
    num_predict_batches: float | None

    @property
    def precision(self) -> str: ...
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]: ...
    @property
    def progress_bar_metrics(self) -> dict[str, float]: ...
    @property
    def global_step(self) -> int: ...
    @property
    def current_epoch(self) -> int: ...
    @property
    def should_stop(self) -> bool: ...
    @property
    def sanity_checking(self) -> bool: ...
    @property
    def loggers(self) -> list[Any]: ...
    @property
    def model(self) -> Any: ...
    @property
    def optimizers(self) -> list[torch.optim.Optimizer]: ...
    @property
    def lr_scheduler_configs(self) -> list[Any]: ...
    @property
    def is_global_zero(self) -> bool: ...
    @property
    def world_size(self) -> int: ...
    @property
    def global_rank(self) -> int: ...
    @property
    def estimated_stepping_batches(self) -> int | float: ...

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[None]: ...
    def fit(self, model: Any, *args: Any, **kwargs: Any) -> None: ...
    def save_checkpoint(self, path: str | os.PathLike[str]) -> None: ...
    def manual_optimizers(self) -> list[Any]: ...
    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> torch.Tensor | None: ...
