"""RunState: the one owner of a run's loop state.

The Trainer holds configuration and the public API; everything that changes while a run goes on lives here:
the stage, epoch and step counters, the batches already trained on in this epoch, the resume point read from a
checkpoint, the model and its strategy-wrapped form, optimizers and schedulers, and the logged metrics. Loops,
callbacks, strategies and checkpointing read and change it through this small public surface, never through
another module's private attributes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prec.training.metrics import MetricStore

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.training.optim import LRSchedulerConfig


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpoint left an epoch: batches already trained on, and the RNG states to continue from."""

    batches_seen: int = 0
    epoch_start_rng: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None


class RunState:
    """Loop state of the current (or last) run of a Trainer. ``trainer.state`` is this object."""

    def __init__(self) -> None:
        #: ``"initializing"``, then ``"fit"``/``"validate"``/``"test"``/``"predict"`` while running, ``"finished"``.
        self.stage = "initializing"
        #: Lightning's ``TrainerStatus`` values: ``"initializing"``, ``"running"``, ``"finished"``, ``"interrupted"``
        #: (the last run raised, Ctrl-C included).
        self.status = "initializing"
        #: Whether the last run ran to its end (``trainer.state.finished``, as in Lightning).
        self.finished = False
        #: ``validate``/``test``'s ``verbose``: whether the results table is shown at the end.
        self.verbose = True
        #: Optimizer steps taken (what ``max_steps`` counts; under manual optimization each ``opt.step()``).
        self.global_step = 0
        #: Training batches that ended an optimizer-step window: the step metrics rows are written at (Lightning's
        #: ``_batches_that_stepped``: once per batch however many optimizers stepped).
        self.batches_that_stepped = 0
        self.current_epoch = 0
        #: Batches of the current epoch already trained on (a checkpoint resumes after them).
        self.batches_seen = 0
        #: RNG state when the current epoch's loader was created (a mid-epoch resume replays it).
        self.epoch_start_rng: dict[str, Any] | None = None
        #: Set by a callback or the module to end ``fit`` after the current batch.
        self.should_stop = False
        #: Whether the "min_epochs/min_steps not met" notice was given in this run.
        self.min_notice_given = False
        #: True while the sanity check (a few validation batches before training) runs.
        self.sanity_checking = False
        self.ckpt_path: str | os.PathLike[str] | None = None
        self.model: TrainingModule | None = None
        #: The module as the strategy wrapped it (DDP, FSDP …); the model itself on one device.
        self.wrapped_model: torch.nn.Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.metrics = MetricStore()
        #: The bound callers of each fit hook of the current fit (callbacks' first, then the module's): what
        #: ``manual_backward`` and a manual ``opt.step()`` call, as the loop does under automatic optimization.
        self.hooks: dict[str, list[Callable[..., Any]]] = {}
        #: ``id()`` of the optimizers stepped in the current manual-optimization ``training_step``.
        self.manual_stepped: set[int] = set()
        #: Training batches per epoch of the current fit (``limit_train_batches`` applied; ``inf`` if unsized).
        self.train_batches: float | None = None
        self._resume: ResumePoint | None = None
        self._manual_wrappers: list[Any] = []

    # -- a run's life ---------------------------------------------------------------------------------------
    def start(self, stage: str, model: TrainingModule, ckpt_path: str | os.PathLike[str] | None) -> None:
        self.stage = stage
        self.status = "running"
        self.finished = False
        self.model = model
        self.ckpt_path = ckpt_path
        self.should_stop = False
        self.min_notice_given = False
        self.hooks = {}
        self.metrics.training = stage == "fit"

    def finish(self, interrupted: bool = False) -> None:
        self.stage = "finished"
        self.status = "interrupted" if interrupted else "finished"
        self.finished = not interrupted
        self._resume = None  # a checkpoint's loop state applies to the run that loaded it only

    # -- checkpoints --------------------------------------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        """The counters a checkpoint stores to resume exactly."""
        return {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "batches_that_stepped": self.batches_that_stepped,
            "batches_seen": self.batches_seen,
            "epoch_start_rng": self.epoch_start_rng,
        }

    def restore_loop_state(self, loops: Mapping[str, Any], rng: dict[str, Any] | None) -> None:
        """Take a checkpoint's counters; the next training epoch resumes after its ``batches_seen``."""
        self.current_epoch = int(loops.get("epoch", 0))
        self.global_step = int(loops.get("global_step", 0))
        self.batches_that_stepped = int(loops.get("batches_that_stepped", self.global_step))
        self._resume = ResumePoint(int(loops.get("batches_seen", 0)), loops.get("epoch_start_rng"), rng)

    def take_resume_point(self) -> ResumePoint | None:
        """The pending resume point, once: the epoch that consumes it is the resumed one."""
        resume, self._resume = self._resume, None
        return resume

    def estimated_stepping_batches(self, trainer: Any) -> int | float:
        """Optimizer steps the last ``fit`` takes: batches per epoch (after ``limit_train_batches``) divided by
        ``accumulate_grad_batches``, times the epochs, capped by ``max_steps``."""
        if self.train_batches is None:
            raise RuntimeError("estimated_stepping_batches is known once fit() has its training loader.")
        per_epoch = (
            math.ceil(self.train_batches / trainer.accumulate_grad_batches)
            if self.train_batches != math.inf
            else math.inf
        )
        epochs = trainer.max_epochs if trainer.max_epochs is not None else math.inf
        total = per_epoch * epochs if per_epoch != 0 else 0
        if trainer.max_steps != -1:
            total = min(total, trainer.max_steps)
        return int(total) if total != math.inf else math.inf

    # -- manual optimization ----------------------------------------------------------------------------------
    def manual_optimizers(self, make: Any) -> list[Any]:
        """The manual-optimization wrappers of the current optimizers (``make(optimizer)`` builds one)."""
        if [wrapper.optimizer for wrapper in self._manual_wrappers] != self.optimizers:
            self._manual_wrappers = [make(optimizer) for optimizer in self.optimizers]
        return self._manual_wrappers
