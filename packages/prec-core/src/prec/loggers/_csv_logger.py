"""The CSV metrics file: one row per step that logged something, appended in batches on global rank zero."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Any

from prec.checkpoint.io import make_temporary, remove_stale_temporaries
from prec.loggers._folder import FolderLogger

_FIXED_COLUMNS = ("step", "epoch")


class CSVLogger(FolderLogger):
    """Write logged metrics to ``{save_dir}/{name}/version_{n}/metrics.csv``.

    Rows are buffered (a list append per step, no device sync) and written every ``flush_every_n_steps`` steps,
    at the end of each epoch and when the run ends; only global rank zero writes. Nothing written is ever lost
    to a kill: rows are appended and fsynced, and when a new metric appears the wider file is written beside the
    old one and renamed over it, so at any moment the file on disk holds every row flushed so far. The folder
    is created and test-written at the run's start: a read-only or full disk is a ConfigurationError there.

    Args:
        save_dir: the root folder; ``None`` uses the Trainer's ``default_root_dir``.
        name: the subfolder for this experiment.
        version: an int (``version_{n}``), a folder name, or ``None`` for the next ``version_{n}`` without a
            metrics file.
        flush_every_n_steps: how many steps' rows are kept in memory before they are written.
    """

    marker = "metrics.csv"

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        name: str = "prec_logs",
        version: int | str | None = None,
        flush_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version, flush_every_n_steps)
        self._columns: list[str] = []
        self._unwritten: list[tuple[int, int, dict[str, float]]] = []

    # -- paths ----------------------------------------------------------------------------------------------
    @property
    def metrics_file(self) -> Path:
        return self.log_dir / "metrics.csv"

    # -- the logger protocol ----------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue one row (``metrics["epoch"]`` fills the epoch column); written by :meth:`flush`."""
        values = dict(metrics)
        epoch = int(values.pop("epoch", 0))
        self._unwritten.append((step, epoch, values))

    def log_hyperparams(self, params: Any) -> None:
        """Hyper-parameters are not part of the metrics file (it has one row per step)."""

    def flush(self) -> None:
        """Write the buffered rows. All tensor values are read back in one go (one device sync per flush)."""
        self._unwritten.extend(self.take_rows())
        if not self._unwritten or not self.enabled:
            self._unwritten.clear()
            return
        rows = self._unwritten
        names = sorted({name for _, _, row in rows for name in row})
        new = [name for name in names if name not in self._columns]
        path = self.metrics_file
        if not self._columns and path.exists():  # a file of an earlier run in this folder: keep its rows
            self._columns = _header(path)[len(_FIXED_COLUMNS) :]
            new = [name for name in names if name not in self._columns]
        if new or not path.exists():
            self._rewrite(path, [*self._columns, *new], rows)
            self._columns = [*self._columns, *new]
        else:
            with path.open("a", newline="") as handle:
                csv.writer(handle).writerows(self._cells(rows, self._columns))
                handle.flush()
                os.fsync(handle.fileno())
        self._unwritten = []  # only once written: a failed write is retried by the next flush

    def finalize(self, status: str) -> None:
        self.flush()

    def _rewrite(self, path: Path, columns: list[str], rows: list[tuple[int, int, dict[str, float]]]) -> None:
        """The whole file with the wider header, written beside ``path`` and renamed over it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        old: list[dict[str, str]] = []
        if path.exists():
            with path.open(newline="") as handle:
                old = list(csv.DictReader(handle))
        header = [*_FIXED_COLUMNS, *columns]
        descriptor, temporary = make_temporary(path)
        try:
            with os.fdopen(descriptor, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows([row.get(name, "") for name in header] for row in old)
                writer.writerows(self._cells(rows, columns))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    @staticmethod
    def _cells(rows: list[tuple[int, int, dict[str, float]]], columns: list[str]) -> list[list[Any]]:
        return [[step, epoch, *(row.get(name, "") for name in columns)] for step, epoch, row in rows]

    def __repr__(self) -> str:
        return f"CSVLogger(save_dir={str(self.save_dir)!r}, name={self.name!r})"


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])
