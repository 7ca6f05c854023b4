"""Progress bars: the replaceable progress-bar callback (tqdm by default) and the results table.

:class:`TQDMProgressBar` is a :class:`prec.Callback`: a bar per training epoch, and bars for validation, test and
predict, with a results table after ``validate``/``test``. Replace it by passing another callback (a subclass of
:class:`ProgressBarCallback`). Metrics are read at most a few times a second, since reading them syncs with the
device. :class:`ProgressBar` is the training bar the loops drive directly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from typing_extensions import override

from prec.model.callback import Callback
from prec.training.logging import record_precision_metrics

if TYPE_CHECKING:
    from prec.model.module import StepOutput, TrainingModule
    from prec.model.trainer_view import TrainerView

_REFRESH_SECONDS = 0.25
_STAGE_TITLES = {"validate": "Validate", "test": "Test", "predict": "Predict"}


class ProgressBarCallback(Callback):
    """Base of replaceable progress bars: a Trainer with one of these in ``callbacks`` uses it instead of the
    default, and ``enable_progress_bar=False`` removes it. Subclasses override the hooks they draw in."""

    def print_results(self, stage: str, results: Mapping[str, float]) -> None:
        """Show the results of ``validate``/``test`` (the default prints :func:`results_table` to stdout)."""
        if results:
            print(results_table(stage, results), file=sys.stdout, flush=True)


class TQDMProgressBar(ProgressBarCallback):
    """tqdm bars for training epochs, validation, test and predict; a results table after validate/test.

    Args:
        refresh_rate: redraw every this many batches (``0`` disables the bars; the table is still printed).
        leave: keep each training epoch's bar on screen after it ends.
        file: where the bars go (default ``sys.stderr`` at the time of each bar).
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = True, file: IO[str] | None = None) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            from prec.errors import ConfigurationError

            raise ConfigurationError(f"TQDMProgressBar(refresh_rate={refresh_rate!r}) must be an int >= 0.")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self.file = file
        self.train_bar: Any = None
        self.eval_bar: Any = None
        self.last_refresh = 0.0

    @property
    def enabled(self) -> bool:
        return self.refresh_rate > 0

    # -- training -------------------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        self._close_train(trainer)
        total = _total(getattr(trainer, "num_training_batches", None))
        self.train_bar = _tqdm(total, f"Epoch {trainer.current_epoch}", leave=self.leave, file=self.file)
        self.last_refresh = time.monotonic()

    @override
    def on_train_batch_end(
        self, trainer: TrainerView, module: TrainingModule, outputs: StepOutput, batch: Any, batch_idx: int
    ) -> None:
        self._advance(self.train_bar, trainer, batch_idx)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._close_train(trainer)

    @override
    def on_train_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._close_train(trainer)

    # -- evaluation -----------------------------------------------------------------------------------------
    @override
    def on_validation_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._open_eval(trainer, "Validation", getattr(trainer, "num_val_batches", None))

    @override
    def on_validation_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: StepOutput,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._advance(self.eval_bar, trainer, batch_idx)

    @override
    def on_validation_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._close_eval()
        if trainer.state.stage == "validate" and trainer.is_global_zero and trainer.state.verbose:
            self.print_results("validate", _floats(trainer.callback_metrics))

    @override
    def on_test_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._open_eval(trainer, "Testing", getattr(trainer, "num_test_batches", None))

    @override
    def on_test_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: StepOutput,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._advance(self.eval_bar, trainer, batch_idx)

    @override
    def on_test_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._close_eval()
        if trainer.is_global_zero and trainer.state.verbose:
            self.print_results("test", _floats(trainer.callback_metrics))

    @override
    def on_predict_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._open_eval(trainer, "Predicting", getattr(trainer, "num_predict_batches", None))

    @override
    def on_predict_batch_end(
        self,
        trainer: TrainerView,
        module: TrainingModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._advance(self.eval_bar, trainer, batch_idx, metrics=False)

    @override
    def on_predict_end(self, trainer: TrainerView, module: TrainingModule) -> None:
        self._close_eval()

    @override
    def on_exception(self, trainer: TrainerView, module: TrainingModule, exception: BaseException) -> None:
        self._close_eval()
        self._close_train(trainer)

    # -- drawing --------------------------------------------------------------------------------------------
    def _open_eval(self, trainer: TrainerView, title: str, total: Any) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        self._close_eval()
        # Within fit, the validation bar sits below the training bar and disappears when done.
        inside_fit = self.train_bar is not None
        self.eval_bar = _tqdm(_total(total), title, leave=not inside_fit, file=self.file, position=int(inside_fit))

    def _advance(self, bar: Any, trainer: TrainerView, batch_idx: int, metrics: bool = True) -> None:
        if bar is None:
            return
        bar.update(1)
        if (batch_idx + 1) % self.refresh_rate:
            return
        now = time.monotonic()
        if metrics and now - self.last_refresh >= _REFRESH_SECONDS:
            self.last_refresh = now
            if trainer.state.stage == "fit" and not trainer.sanity_checking:
                record_precision_metrics(trainer)
            values = trainer.progress_bar_metrics
            if values:
                bar.set_postfix(values, refresh=False)
        bar.refresh()

    def _close_train(self, trainer: TrainerView) -> None:
        if self.train_bar is not None:
            record_precision_metrics(trainer)
            values = trainer.progress_bar_metrics
            if values:
                self.train_bar.set_postfix(values, refresh=False)
            self.train_bar.close()
            self.train_bar = None

    def _close_eval(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None


def results_table(stage: str, results: Mapping[str, float]) -> str:
    """A plain-text table of a stage's results, one metric a row (Lightning's layout, without colours)."""
    title = f"{_STAGE_TITLES.get(stage, stage.capitalize())} metric"
    rows = [(name, f"{value:.6g}") for name, value in sorted(results.items())]
    left = max(len(title), *(len(name) for name, _ in rows))
    right = max(len("DataLoader 0"), *(len(value) for _, value in rows))
    rule = "─" * (left + right + 7)
    lines = [rule, f"   {title:^{left}}   {'DataLoader 0':^{right}}", rule]
    lines += [f"   {name:^{left}}   {value:^{right}}" for name, value in rows]
    lines.append(rule)
    return "\n".join(lines)


def _tqdm(total: float, desc: str, *, leave: bool, file: IO[str] | None, position: int | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=None if total == math.inf else int(total),
        desc=desc,
        leave=leave,
        file=file if file is not None else sys.stderr,
        position=position,
        dynamic_ncols=True,
    )


def _total(value: Any) -> float:
    """A bar's length from a batch count the Trainer may offer (unknown: an open-ended bar)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return value
    return math.inf


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}
