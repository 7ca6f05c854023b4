"""Several loggers at once: one buffer on the hot path, fanned out at flush time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prec.errors import ConfigurationError
from prec.loggers._buffer import RowBuffer
from prec.loggers._protocol import Logger, call_optional

_ACCEPTED = (
    "True (a prec.CSVLogger under default_root_dir), False or None (no logging), a logger (prec.CSVLogger,"
    " prec.TensorBoardLogger, or any object with log_metrics(metrics, step): see prec.loggers.Logger), or a list"
    " of loggers"
)


class LoggerGroup(RowBuffer):
    """The object the training loop writes to: ``rows``, ``flush_every_n_steps``, ``setup``, ``flush``.

    Rows are read back from the device once per flush, then each logger gets ``log_metrics`` for every row and
    its ``flush()``. ``flush_every_n_steps`` is the smallest of the loggers' own (default 100)."""

    def __init__(self, loggers: Iterable[Logger]) -> None:
        self.loggers: list[Logger] = list(loggers)
        every = [getattr(logger, "flush_every_n_steps", None) for logger in self.loggers]
        super().__init__(min((n for n in every if isinstance(n, int) and n >= 1), default=100))
        self.enabled = True

    def setup(self, root_dir: Path, is_global_zero: bool) -> None:
        self.enabled = is_global_zero
        for logger in self.loggers:
            call_optional(logger, "setup", root_dir, is_global_zero)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            for logger in self.loggers:
                call_optional(logger, "log_hyperparams", params)

    def flush(self) -> None:
        rows = self.take_rows()
        if not self.enabled:
            return
        for logger in self.loggers:
            for step, epoch, values in rows:
                logger.log_metrics({**values, "epoch": epoch}, step)
            call_optional(logger, "flush")

    def finalize(self, status: str) -> None:
        self.flush()
        errors: list[Exception] = []
        for logger in self.loggers:
            try:
                call_optional(logger, "finalize", status)
            except Exception as error:  # noqa: BLE001 - close every logger, then report
                errors.append(error)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"LoggerGroup({self.loggers!r})"


def resolve_loggers(value: Any) -> LoggerGroup | None:
    """The Trainer's ``logger=`` argument as the one object the loop writes to (``None``: no logging)."""
    from prec.loggers._csv_logger import CSVLogger

    if value is True:
        return LoggerGroup([CSVLogger()])
    if value is None or value is False:
        return None
    if isinstance(value, LoggerGroup):
        return value
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (bool, str, bytes, Mapping)) or not isinstance(item, Logger):
            raise ConfigurationError(f"logger={value!r}: {item!r} is not a logger. Accepted: {_ACCEPTED}.")
    if len({id(item) for item in items}) != len(items):
        raise ConfigurationError(f"logger={value!r} lists the same logger twice; each would write every row twice.")
    return LoggerGroup(items) if items else None
