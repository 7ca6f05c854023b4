"""What the Trainer's loops call: flush buffered rows, log epoch results and the precision's own numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prec.loggers._protocol import call_optional

if TYPE_CHECKING:
    from prec.model.trainer_view import TrainerView


def _sink(trainer: TrainerView) -> Any:
    """The object the loop writes to: every logger of the Trainer."""
    return trainer.log_sink


def record_precision_metrics(trainer: TrainerView) -> None:
    """Log the precision's own numbers (loss scale, skipped steps). Reading them syncs with the device, so this
    runs at log flushes, progress-bar refreshes and epoch ends, never per step."""
    values = trainer.precision_plugin.metrics()
    if values:
        trainer.state.metrics.record(values, prog_bar=True)


def flush_logs(trainer: TrainerView, training: bool) -> None:
    """Write buffered metric rows (with the precision's numbers when training)."""
    if training:
        record_precision_metrics(trainer)
    sink = _sink(trainer)
    if sink is None:
        return
    if trainer.state.metrics.pending and trainer.strategy.is_global_zero:
        sink.log_row(
            trainer.state.metrics.take_pending(), max(trainer.state.batches_that_stepped - 1, 0), trainer.current_epoch
        )
    sink.flush()


def log_results(trainer: TrainerView, results: dict[str, Any]) -> None:
    """One metrics row for epoch-level results (and anything still pending)."""
    sink = _sink(trainer)
    if sink is not None and trainer.strategy.is_global_zero:
        row = {**trainer.state.metrics.take_pending(), **results}
        if row:
            sink.log_row(row, max(trainer.state.batches_that_stepped - 1, 0), trainer.current_epoch)


def finalize_logs(trainer: TrainerView, status: str) -> None:
    """At the end of a run (``"success"`` or ``"failed"``): write what is left and close the loggers' files."""
    sink = _sink(trainer)
    if sink is not None:
        call_optional(sink, "finalize", status)
