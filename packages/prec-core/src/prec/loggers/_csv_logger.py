"""The CSV metrics file: one row per step that logged something, appended in batches on global rank zero."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any

from prec.checkpoint.io import make_temporary, remove_stale_temporaries
from prec.loggers._folder import FolderLogger
from prec.loggers._paths import raise_full

_FIXED_COLUMNS = ("step", "epoch")


class CSVLogger(FolderLogger):
    """Write logged metrics to ``{save_dir}/{name}/version_{n}/metrics.csv``.

    Rows are buffered (a list append per step, no device sync) and written every ``flush_every_n_steps`` steps,
    at the end of each epoch and when the run ends; only global rank zero writes. Nothing written is ever lost
    to a kill: rows are appended whole and fsynced, and when a new metric appears the wider file is written beside
    the old one and renamed over it, so at any moment the file on disk holds every row flushed so far and no torn
    line. The folder is created and test-written at the run's start: a read-only or full disk is a
    ConfigurationError there; a disk that fills during the run is a :class:`~prec.StorageFullError` that stops it.

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
        """Write the buffered rows. All tensor values are read back in one go (one device sync per flush).

        Rows are written whole: the new lines go to the file in one write and are fsynced; a write that fails
        (a full disk) is cut back to the last complete line and raised as :class:`~prec.StorageFullError`, with
        the rows kept here for a later flush."""
        self._unwritten.extend(self.take_rows())
        if not self._unwritten or not self.enabled:
            self._unwritten.clear()
            return
        rows = self._unwritten
        path = self.metrics_file
        try:
            self._write(path, rows)
        except OSError as error:
            raise_full(error, "CSVLogger", path, len(rows))
        self._unwritten = []  # only once written: a failed write is retried by the next flush

    def _write(self, path: Path, rows: list[tuple[int, int, dict[str, float]]]) -> None:
        names = sorted({name for _, _, row in rows for name in row})
        if not self._columns and path.exists():  # a file of an earlier run in this folder: keep its rows
            self._columns = _header(path)[len(_FIXED_COLUMNS) :]
        new = [name for name in names if name not in self._columns]
        if new or not path.exists():
            self._rewrite(path, [*self._columns, *new], rows)
            self._columns = [*self._columns, *new]
        else:
            _append_whole(path, _lines(self._cells(rows, self._columns)))

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


def _lines(cells: list[list[Any]]) -> bytes:
    """Complete CSV lines, encoded, so they reach the file in one write."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(cells)
    return text.getvalue().encode()


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync; on failure cut the file back to its old length, so no line is ever torn."""
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):  # a short write is not an error; the next write reports the full disk
                written += os.write(handle.fileno(), data[written:])
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), size)
            raise


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])
