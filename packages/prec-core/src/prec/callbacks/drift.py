"""DriftCheck: are the low-precision gradients of a Trainer run still the model's gradients?

Every ``every_n_steps`` optimizer steps the check takes that step's micro-batch and recomputes its loss and
gradients from the same weights in float32 (in float64 when the run itself is 32-true or 64-true) with
:func:`prec.numerics.gradient_drift`, on a copy of the model without autocast. It logs per layer the relative
gradient error and the cosine (``drift/{layer}/relative_error``, ``drift/{layer}/cosine``, ``drift/loss_gap``) and
warns (:class:`prec.PrecWarning`) naming the layers whose cosine falls under ``threshold``, or when the loss gap
exceeds ``max_loss_gap`` or grew at every check of three or more (:func:`prec.numerics.judge`).

What it needs of the module: ``training_step(batch, batch_idx)`` computes the loss from the batch alone (the copy
runs it once more, in float32; what it logs then goes nowhere) and the run uses automatic optimization without
gradient accumulation, so the gradients before the optimizer step are that one micro-batch's.

On the steps it does not check, its hooks (batch start, before backward, before the optimizer step) read an
attribute, compare and return: no batch end hook, no copy, no device synchronisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.callback import Callback
from prec.numerics.drift import MAX_LOSS_GAP, MIN_COSINE, DriftReport, gradient_drift, judge
from prec.numerics.formats import PRECISION_FORMATS
from prec.numerics.result import key_name
from prec.options import is_number, is_positive_int
from prec.training.epoch import extract_loss
from prec.training.metrics import MetricStore

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView
    from prec.training.run_state import RunState

__all__ = ["DriftCheck", "drift_scalars"]

_TRAINER_ATTRIBUTE = "_prec_trainer"  # where a TrainingModule finds its Trainer (set by the Trainer's stages)
_LOSS_HISTORY = 16  # loss gaps kept for the "grew at every check" rule


def drift_scalars(report: DriftReport) -> dict[str, float]:
    """A report as flat keys: ``drift/{layer}/relative_error``, ``drift/{layer}/cosine``, ``drift/loss_gap``."""
    scalars: dict[str, float] = {}
    for name, layer in report.layers.items():
        scalars[f"drift/{key_name(name)}/relative_error"] = layer.relative_error
        scalars[f"drift/{key_name(name)}/cosine"] = layer.cosine
    if report.loss_gap is not None:
        scalars["drift/loss_gap"] = report.loss_gap
    return scalars


class _ScratchState:
    """The run's state with a metric store of its own: what the reference step logs is thrown away."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self.metrics = MetricStore()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class _ScratchTrainer:
    """The running Trainer as the reference copy of the module sees it: everything but the metric store."""

    def __init__(self, trainer: TrainerView) -> None:
        self._trainer = trainer
        self.state = _ScratchState(trainer.state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


class DriftCheck(Callback):
    """Compare one micro-batch's gradients with a float32 recomputation every ``every_n_steps`` steps.

    Args:
        every_n_steps: check one optimizer step in this many.
        threshold: the smallest acceptable gradient cosine of a layer (or of any one of its parameters).
        max_loss_gap: the largest acceptable relative gap between the run's loss and the reference loss.
        plain_linear: run every ``torch.nn.Linear`` subclass as ``torch.nn.Linear`` in the reference (``None``:
            when the precision computes its matmuls in fp8, or is one the numerics engine does not know).
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        threshold: float = MIN_COSINE,
        max_loss_gap: float = MAX_LOSS_GAP,
        *,
        plain_linear: bool | None = None,
    ) -> None:
        if not is_positive_int(every_n_steps):
            raise ConfigurationError(f"DriftCheck(every_n_steps={every_n_steps!r}) must be an int >= 1.")
        if not is_number(threshold) or not -1.0 <= threshold <= 1.0:
            raise ConfigurationError(f"DriftCheck(threshold={threshold!r}) must be a cosine, a number in [-1, 1].")
        if not is_number(max_loss_gap) or max_loss_gap < 0:
            raise ConfigurationError(f"DriftCheck(max_loss_gap={max_loss_gap!r}) must be a number >= 0.")
        if plain_linear is not None and not isinstance(plain_linear, bool):
            raise ConfigurationError(f"DriftCheck(plain_linear={plain_linear!r}) must be True, False or None.")
        self.every_n_steps = every_n_steps
        self.threshold = float(threshold)
        self.max_loss_gap = float(max_loss_gap)
        self.plain_linear = plain_linear
        #: Every check of this fit, oldest first (the last ``16``).
        self.reports: list[DriftReport] = []
        #: The optimizer steps checked, and the flat values of the last check.
        self.checked_steps: list[int] = []
        self.last_scalars: dict[str, float] = {}
        self._reference_dtype = torch.float32
        self._plain = False
        self._pending: tuple[Any, int] | None = None
        self._loss: torch.Tensor | None = None
        self._run_state: RunState | None = None  # ``global_step`` as a plain attribute, not a property

    @override
    def on_fit_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        if not module.automatic_optimization:
            raise ConfigurationError(
                "DriftCheck needs automatic optimization: with manual optimization prec does not see the loss"
                " and the gradients of one micro-batch before the optimizer step."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ConfigurationError(
                f"DriftCheck compares one micro-batch's gradients, but accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches} sums several before the step; drop one of them."
            )
        name = trainer.precision
        self._reference_dtype = torch.float64 if name in ("32-true", "64-true") else torch.float32
        roles = PRECISION_FORMATS.get(name)
        self._plain = (
            (roles is None or roles.forward in ("e4m3", "e5m2")) if self.plain_linear is None else (self.plain_linear)
        )
        self.reports, self.checked_steps, self.last_scalars = [], [], {}
        self._pending, self._loss = None, None
        self._run_state = trainer.state

    @override
    def teardown(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        self._pending, self._loss = None, None  # no batch or loss kept alive after the run

    @override
    def on_train_batch_start(self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int) -> None:
        # Runs every batch: an attribute read and an integer compare, no call. A batch whose training_step
        # returned None leaves no step, so the next batch has the same global_step and replaces it here.
        state = self._run_state
        if state is not None and (state.global_step + 1) % self.every_n_steps == 0:
            self._pending, self._loss = (batch, batch_idx), None
        elif self._pending is not None:
            self._pending, self._loss = None, None

    @override
    def on_before_backward(self, trainer: TrainerView, module: TrainingModule, loss: torch.Tensor) -> None:
        if self._pending is not None:
            self._loss = loss.detach()

    @override
    def on_before_optimizer_step(
        self, trainer: TrainerView, module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None:
        pending, self._pending = self._pending, None  # several optimizers: the first call sees every gradient
        if pending is None:
            return
        report = self.check(trainer, module, *pending)
        self.publish(trainer, report)

    def check(self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int) -> DriftReport:
        """The drift of this step's gradients (already unscaled) against the reference on ``batch``."""
        scratch = _ScratchTrainer(trainer)

        def reference_loss(copy: torch.nn.Module, reference_batch: Any) -> torch.Tensor:
            copy.__dict__[_TRAINER_ATTRIBUTE] = scratch
            loss = extract_loss(copy.training_step(reference_batch, batch_idx))  # type: ignore[operator]
            if loss is None:
                raise ConfigurationError("DriftCheck: training_step returned None for the reference step.")
            return loss

        attached = module.__dict__.pop(_TRAINER_ATTRIBUTE, None)  # the copy must not deep-copy the Trainer
        try:
            return gradient_drift(
                module,
                batch,
                reference_loss,
                reference_dtype=self._reference_dtype,
                low_loss=self._loss,
                plain_linear=self._plain,
            )
        finally:
            if attached is not None:
                module.__dict__[_TRAINER_ATTRIBUTE] = attached

    def publish(self, trainer: TrainerView, report: DriftReport) -> None:
        """Log one check, judge it with the ones before, and warn when it drifted."""
        step = trainer.global_step
        self.reports = [*self.reports, report][-_LOSS_HISTORY:]
        self.checked_steps.append(step)
        self.last_scalars = scalars = drift_scalars(report)
        for name, value in scalars.items():
            trainer.state.metrics.log(name, value, False, True, False, False)
        sink = trainer.log_sink
        if sink is not None and trainer.is_global_zero:
            sink.log_row(dict(scalars), step, trainer.current_epoch)
        verdict = judge(self.reports, min_cosine=self.threshold, max_loss_gap=self.max_loss_gap)
        if not verdict.ok:
            reference = "float64" if self._reference_dtype == torch.float64 else "float32"
            warn(
                f"prec DriftCheck at optimizer step {step}: the {trainer.precision} gradients drifted from a"
                f" {reference} recomputation of the same micro-batch: {verdict.summary()}.",
                PrecWarning,
            )
