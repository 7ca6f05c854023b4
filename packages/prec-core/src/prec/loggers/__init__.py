"""Loggers: where ``self.log`` values go. Any object with ``log_metrics(metrics, step)`` is a logger (see
:class:`Logger`); prec ships a CSV and a TensorBoard logger, and :func:`resolve_loggers` fans one run out to
several."""

from prec.loggers._buffer import RowBuffer
from prec.loggers._csv_logger import CSVLogger
from prec.loggers._group import LoggerGroup, resolve_loggers
from prec.loggers._protocol import Logger
from prec.loggers._tensorboard import TensorBoardLogger

__all__ = [
    "CSVLogger",
    "Logger",
    "LoggerGroup",
    "RowBuffer",
    "TensorBoardLogger",
    "resolve_loggers",
]
