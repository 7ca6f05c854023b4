"""NumericsMonitor: per-layer numerics of a Trainer run, every few optimizer steps, through the loggers.

Every ``every_n_steps`` optimizer steps (default: the Trainer's ``log_every_n_steps``) the monitor records one
step with :class:`prec.numerics.NumericsRecorder` — per module and tensor kind, amax and the fractions that under-
or overflow in each format, and the lost-update ratio of the weights — and then:

* logs the flat ``numerics/...`` keys (``docs/numerics.md``) through the Trainer's loggers, at that step, and puts
  them in ``trainer.callback_metrics``;
* with a :class:`prec.TensorBoardLogger`, writes each tensor's log2-magnitude histogram
  (``numerics/{module}/{kind}/log2_magnitude``);
* when that step was skipped for inf/NaN gradients, warns (:class:`prec.PrecWarning`) naming the layers whose
  values overflowed on it. A skip seen on a step that was not recorded makes the monitor record the next one.

At the end of ``fit`` it prints the worst values it saw (the "top offenders", 80 columns) to stderr when the
progress bar is on and to the ``prec`` logger always, as the run's first lines are.

On the other steps nothing is installed: no module or tensor hook, no device synchronisation. Each of the
monitor's three step hooks reads plain attributes (the run state and the guard are kept at ``fit`` start), compares
integers and returns, with no further call; what remains per idle step is the Trainer calling those hooks
(``benchmarks/numerics_cost.py`` counts it). A recorded step costs a float32 copy of each tensor measured and,
with ``"updates"``, a float32 replay of the optimizer step for the recorded parameters.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.loggers import TensorBoardLogger
from prec.model.callback import Callback
from prec.numerics.formats import PRECISION_FORMATS, FormatInput, parse_formats
from prec.numerics.recorder import DEFAULT_FORMATS, KINDS, ModuleFilter, NumericsRecorder
from prec.numerics.result import NumericsResult, Offender, format_table, key_name
from prec.options import is_positive_int

if TYPE_CHECKING:
    from prec.model.module import StepOutput, TrainingModule
    from prec.model.trainer_view import TrainerView
    from prec.precision.guard import NonFiniteGuard
    from prec.training.run_state import RunState

__all__ = ["NumericsMonitor", "run_formats"]

_LISTED = 6


def run_formats(precision: str, extra: Iterable[FormatInput] | FormatInput = ()) -> tuple[str, ...]:
    """The formats a run at ``precision`` computes in (:data:`~prec.numerics.PRECISION_FORMATS`), then ``extra``;
    the engine's defaults when the precision is not one the engine knows and nothing extra is named."""
    roles = PRECISION_FORMATS.get(precision)
    own = [] if roles is None else [roles.forward, roles.gradients, roles.weights]
    named = list(extra) if not isinstance(extra, (str, torch.dtype)) else [extra]
    chosen = [*own, *named] or list(DEFAULT_FORMATS)
    return tuple(fmt.name for fmt in parse_formats(chosen, argument="NumericsMonitor(formats=...)"))


class NumericsMonitor(Callback):
    """Record per-layer numerics every ``every_n_steps`` optimizer steps (see the module documentation).

    Args:
        every_n_steps: record one optimizer step in this many (``None``: the Trainer's ``log_every_n_steps``).
        formats: formats to measure besides the run's own (``"fp16"``, ``"e4m3"`` ...: see
            :func:`prec.numerics.parse_formats`); e.g. ``["fp16"]`` at 32-true shows what 16-mixed would overflow.
        module_filter: ``(name, module) -> bool`` choosing the modules (default: Linear, convolutions, Embedding,
            normalisation layers, MultiheadAttention).
        kinds: which tensors: any of ``"activations"``, ``"gradients"``, ``"weights"``, ``"updates"``.
        histograms: write log2-magnitude histograms to TensorBoard (``None``: when a TensorBoardLogger is there).
        top: how many rows the end-of-fit table shows (0: no table).
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        formats: Iterable[FormatInput] | FormatInput = (),
        module_filter: ModuleFilter | None = None,
        kinds: Sequence[str] = KINDS,
        *,
        histograms: bool | None = None,
        top: int = 10,
    ) -> None:
        if every_n_steps is not None and not is_positive_int(every_n_steps):
            raise ConfigurationError(f"NumericsMonitor(every_n_steps={every_n_steps!r}) must be None or an int >= 1.")
        if module_filter is not None and not callable(module_filter):
            raise ConfigurationError(
                f"NumericsMonitor(module_filter={module_filter!r}) must be a callable (name, module) -> bool."
            )
        if isinstance(kinds, str) or not kinds or not all(kind in KINDS for kind in kinds):
            raise ConfigurationError(f"NumericsMonitor(kinds={kinds!r}): give a non-empty list of {', '.join(KINDS)}.")
        if histograms is not None and not isinstance(histograms, bool):
            raise ConfigurationError(f"NumericsMonitor(histograms={histograms!r}) must be True, False or None.")
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise ConfigurationError(f"NumericsMonitor(top={top!r}) must be an int >= 0.")
        self.extra_formats = () if formats == () else tuple(parse_formats(formats, argument="NumericsMonitor(formats)"))
        self.every_n_steps = every_n_steps
        self.module_filter = module_filter
        self.kinds = tuple(kinds)
        self.histograms = histograms
        self.top = top
        self.recorder: NumericsRecorder | None = None
        #: The ``numerics/...`` values of the last recorded step, and that step's index.
        self.last_scalars: dict[str, float] = {}
        self.last_step: int | None = None
        #: Indices of the optimizer steps recorded in this fit.
        self.recorded_steps: list[int] = []
        #: The worst value seen per (module, kind, format, what) over the fit.
        self.worst: dict[tuple[str, str, str, str], Offender] = {}
        self._every = 1
        self._run_state: RunState | None = None  # ``global_step`` as a plain attribute, not a property
        self._guard: NonFiniteGuard | None = None
        self._recording: int | None = None
        self._record_next = False
        self._skips_seen = 0
        self._run_formats: tuple[str, ...] = ()
        self._tensorboards: list[TensorBoardLogger] = []
        self._warned: set[tuple[str, ...]] = set()

    # -- the run's frame ------------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Build the recorder on the model the precision converted (fp8 layers, kept float32 modules)."""
        precision = trainer.precision_plugin
        self._run_formats = run_formats(trainer.precision)
        formats = run_formats(trainer.precision, [fmt.name for fmt in self.extra_formats])
        self._tensorboards = [
            logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero
        ]
        histograms = bool(self._tensorboards) if self.histograms is None else self.histograms
        self.recorder = NumericsRecorder(
            module,
            formats,
            self.kinds,
            self.module_filter,
            histograms=histograms,
            effective_weight=getattr(precision, "effective_weight", None),
        )
        if not self.recorder.modules:
            raise ConfigurationError("NumericsMonitor(module_filter=...) selected no module of the model.")
        self._every = self.every_n_steps or trainer.log_every_n_steps or 1
        self._recording, self._record_next = None, False
        self._run_state, self._guard = trainer.state, precision.guard
        self._skips_seen = precision.guard.skipped
        self.recorded_steps, self.worst, self.last_scalars, self.last_step = [], {}, {}, None
        self._warned = set()

    @override
    def on_fit_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        if self.top and trainer.is_global_zero and self.recorded_steps:
            report = self.report(self.top)
            logging.getLogger("prec").info("%s", report)
            if trainer.enable_progress_bar:
                print(report, file=sys.stderr)

    @override
    def teardown(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        self._abandon()

    @override
    def on_exception(self, trainer: TrainerView, module: TrainingModule, exception: BaseException) -> None:
        self._abandon()

    # -- the steps ------------------------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int) -> None:
        # The idle path: attribute reads and integer compares only (no property, no call): it runs every batch.
        recorder, guard, state = self.recorder, self._guard, self._run_state
        if recorder is None or guard is None or state is None or self._recording is not None:
            return
        step = state.global_step
        if (step + 1) % self._every and not self._record_next:
            if guard.skipped == self._skips_seen:
                return
            self._skips_seen = guard.skipped  # a skip since the last look: record this step (a host integer)
        self._record_next = False
        self._recording = step
        recorder.start()

    @override
    def on_before_optimizer_step(
        self, trainer: TrainerView, module: TrainingModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._recording is not None and self.recorder is not None:
            self.recorder.before_optimizer_step(optimizer)

    @override
    def on_train_batch_end(
        self, trainer: TrainerView, module: TrainingModule, outputs: StepOutput, batch: Any, batch_idx: int
    ) -> None:
        step = self._recording
        if step is None or trainer.global_step <= step or self.recorder is None:
            return  # not recording, or inside an accumulation window: the optimizer step is still to come
        self._recording = None
        self.recorder.after_optimizer_step()
        result = self.recorder.stop()
        self.publish(trainer, result, step)
        if bool(trainer.precision_plugin.step_skipped):
            self._skips_seen = trainer.precision_plugin.guard.skipped
            self._warn_skip(result, step)

    # -- results --------------------------------------------------------------------------------------------
    def publish(self, trainer: TrainerView, result: NumericsResult, step: int) -> None:
        """Log one recorded step (one synchronisation), update the worst values and the TensorBoard histograms."""
        scalars = result.scalars()
        self.last_scalars, self.last_step = scalars, step
        self.recorded_steps.append(step)
        for row in result.top_offenders(10**9):
            key = (row.module, row.kind, row.format, row.what)
            if key not in self.worst or row.value > self.worst[key].value:
                self.worst[key] = row
        metrics = trainer.state.metrics
        for name, value in scalars.items():
            metrics.log(name, value, False, True, False, False)  # callback_metrics only: the row is written below
        sink = trainer.log_sink
        if sink is not None and trainer.is_global_zero and scalars:
            sink.log_row(dict(scalars), step, trainer.current_epoch)
        if self._tensorboards and result.histogram_counts is not None:
            self._write_histograms(result, step)

    def offenders(self, n: int = 10) -> list[Offender]:
        """The ``n`` worst values over the recorded steps: overflows, then lost updates, then underflows."""
        order = {"overflow": 3, "lost_update": 2, "underflow": 1}
        rows = sorted(self.worst.values(), key=lambda row: (order[row.what], row.value), reverse=True)
        return rows[:n]

    def report(self, n: int = 10) -> str:
        """The end-of-fit table: a title line and :func:`prec.numerics.format_table` of :meth:`offenders`."""
        steps = len(self.recorded_steps)
        title = f"prec numerics: worst values over {steps} recorded step{'s' * (steps != 1)} (max per row)"
        return title + "\n" + format_table(self.offenders(n))

    # -- internals ------------------------------------------------------------------------------------------
    def _warn_skip(self, result: NumericsResult, step: int) -> None:
        """Warn once per fit for each set of overflowing layers (a run that keeps skipping says it once)."""
        overflowed, nonfinite = _overflowed_layers(result, self._run_formats)
        layers = tuple(item.rsplit(",", 1)[0] for item in overflowed)  # "module (kind": not the fraction
        if layers in self._warned:
            return
        self._warned.add(layers)
        if overflowed:
            what = f"values overflowed {'/'.join(self._run_formats)} on that step in: {_listed(overflowed)}."
            hint = " Keep them in float32 (precision_options={'keep_float32': [...]}, or a plan from `prec plan`)."
        else:
            what = "no recorded layer's values overflowed on that step; the inf/NaN came from elsewhere"
            hint = " (the loss, an operation between layers, or a module outside module_filter)."
        after = f" Layers holding inf/NaN without overflowing themselves: {_listed(nonfinite)}." if nonfinite else ""
        warn(f"prec NumericsMonitor: optimizer step {step} was skipped; {what}{hint}{after}", PrecWarning)

    def _write_histograms(self, result: NumericsResult, step: int) -> None:
        edges = NumericsResult.histogram_edges()
        centres = edges[:-1] + 0.5
        for name, counts in result.histograms().items():
            total = float(counts.sum())
            if total == 0:
                continue
            used = counts.nonzero().flatten()
            for logger in self._tensorboards:
                logger.experiment.add_histogram_raw(
                    f"{name}/log2_magnitude",
                    min=float(edges[int(used[0])]),
                    max=float(edges[int(used[-1]) + 1]),
                    num=total,
                    sum=float((centres * counts).sum()),
                    sum_squares=float((centres * centres * counts).sum()),
                    bucket_limits=edges[1:].tolist(),
                    bucket_counts=counts.tolist(),
                    global_step=step,
                )

    def _abandon(self) -> None:
        """Remove the recorder's hooks when a run ends in the middle of a recorded step."""
        if self.recorder is not None and self.recorder.active:
            self.recorder.stop()
        self._recording = None


def _listed(names: Sequence[str]) -> str:
    extra = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + extra


def _overflowed_layers(result: NumericsResult, formats: Sequence[str]) -> tuple[list[str], list[str]]:
    """``"module (kind, x% over)"`` for each recorded tensor with values above the largest finite value of one of
    ``formats``, and ``"module (kind)"`` for those holding inf/NaN only because their inputs did."""
    overflowed, nonfinite = [], []
    for module, kinds in result.to_dict().items():
        for kind, stats in kinds.items():
            if not isinstance(stats, dict) or "amax" not in stats:
                continue
            worst = max((stats[fmt]["overflow"] for fmt in formats if fmt in stats), default=0.0)
            if worst > 0:
                overflowed.append(f"{key_name(module)} ({kind}, {100 * worst:.2f}% over)")
            elif not math.isfinite(stats["amax"]):
                nonfinite.append(f"{key_name(module)} ({kind})")
    return overflowed, nonfinite
