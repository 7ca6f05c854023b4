"""EarlyStopping: stop ``fit`` when a monitored metric stops improving (Lightning's callback and semantics)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.callback import Callback
from prec.training.checks import check_bool, check_choice, check_int, check_metric_name, check_number

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

_log = logging.getLogger("prec")


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    checks in a row (a check is one validation run, or one training epoch with ``check_on_train_epoch_end``).

    Args:
        monitor: the logged metric to watch (``trainer.callback_metrics``).
        min_delta: the smallest change that counts as an improvement.
        patience: how many checks without improvement to allow before stopping.
        verbose: log each decision (logger ``prec``).
        mode: ``"min"`` or ``"max"``: which way ``monitor`` is better.
        strict: raise when ``monitor`` was not logged (``False``: skip the check, with a warning when verbose).
        check_finite: stop when ``monitor`` becomes NaN or infinite.
        stopping_threshold: stop as soon as ``monitor`` is better than this.
        divergence_threshold: stop as soon as ``monitor`` is worse than this.
        check_on_train_epoch_end: check at the end of each training epoch instead of after each validation;
            ``None``: at epoch end when validation runs once per epoch at its end, otherwise after validation.
    """

    is_monitoring_callback = True  # runs after the module's on_train_epoch_end

    order = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        owner = "EarlyStopping"
        monitor = check_metric_name(f"{owner}(monitor)", monitor)  # type: ignore[assignment]
        mode = check_choice(f"{owner}(mode)", mode, self.order)
        patience = check_int(f"{owner}(patience)", patience, 0, "an int >= 0")
        min_delta = check_number(f"{owner}(min_delta)", min_delta, finite=True)  # type: ignore[assignment]
        verbose, strict, check_finite = (
            check_bool(f"{owner}({name})", value)
            for name, value in (("verbose", verbose), ("strict", strict), ("check_finite", check_finite))
        )
        stopping_threshold = check_number(f"{owner}(stopping_threshold)", stopping_threshold, optional=True)
        divergence_threshold = check_number(f"{owner}(divergence_threshold)", divergence_threshold, optional=True)
        if check_on_train_epoch_end is not None:
            check_bool(f"{owner}(check_on_train_epoch_end)", check_on_train_epoch_end)
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        # Lightning's convention: the delta is signed so that "current - min_delta beats best" means improved.
        self.min_delta = abs(float(min_delta)) * (1 if mode == "max" else -1)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=torch.float64)

    @property
    @override
    def state_key(self) -> str:
        return self.generate_state_key(monitor=self.monitor, mode=self.mode)

    # -- hooks ----------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        if self.check_on_train_epoch_end is None:
            interval = trainer.val_check_interval
            once_per_epoch = interval is None or (isinstance(interval, float) and interval == 1.0)
            self.check_on_train_epoch_end = once_per_epoch and trainer.check_val_every_n_epoch == 1

    @override
    def on_train_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        if self.check_on_train_epoch_end and not self._skip(trainer):
            self.check(trainer)

    @override
    def on_validation_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        if not self.check_on_train_epoch_end and not self._skip(trainer):
            self.check(trainer)

    # -- the decision ---------------------------------------------------------------------------------------
    def check(self, trainer: TrainerView) -> None:
        """Read ``monitor`` and update the counters; stop the run when a criterion is met (on any process)."""
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            message = f"EarlyStopping(monitor={self.monitor!r}) found no such logged metric; logged: {sorted(metrics)}."
            if self.strict:
                raise ConfigurationError(message + " Log it with self.log(), or pass strict=False to skip.")
            if self.verbose:
                warn(message, PrecWarning)
            return
        current = metrics[self.monitor].detach().squeeze().to(torch.float64).cpu()
        should_stop, reason = self.evaluate(current)
        should_stop = trainer.strategy.reduce_any(should_stop)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
        if reason and self.verbose and trainer.is_global_zero:
            _log.info(reason)

    def evaluate(self, current: torch.Tensor) -> tuple[bool, str | None]:
        """``(should_stop, reason)`` for the value ``current``, updating ``best_score`` and ``wait_count``."""
        better = torch.lt if self.mode == "min" else torch.gt
        sign = self.order[self.mode]
        if self.check_finite and not torch.isfinite(current):
            return True, (
                f"Monitored metric {self.monitor} = {current.item()} is not finite. Previous best value was"
                f" {self.best_score.item():.3f}. Signaling Trainer to stop."
            )
        if self.stopping_threshold is not None and better(current, self.stopping_threshold):
            return True, (
                f"Stopping threshold reached: {self.monitor} = {current.item()} {sign} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and better(-current, -self.divergence_threshold):
            return True, (
                f"Divergence threshold reached: {self.monitor} = {current.item()} {sign} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        if better(current - self.min_delta, self.best_score.to(current.dtype)):
            reason = self._improvement(current)
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. Best score:"
                f" {self.best_score.item():.3f}. Signaling Trainer to stop."
            )
        return False, None

    def _improvement(self, current: torch.Tensor) -> str:
        if torch.isfinite(self.best_score):
            delta = abs(self.best_score.item() - current.item())
            return (
                f"Metric {self.monitor} improved by {delta:.3f} >= min_delta = {abs(self.min_delta)}. New best score:"
                f" {current.item():.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current.item():.3f}"

    @staticmethod
    def _skip(trainer: TrainerView) -> bool:
        """Only ``fit`` decides (a standalone ``validate()`` never stops anything), never the sanity check."""
        return trainer.state.stage != "fit" or trainer.sanity_checking

    # -- state ----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = torch.as_tensor(state_dict["best_score"], dtype=torch.float64)
        self.patience = int(state_dict["patience"])
