"""The CSV metrics file: one row per step that logged something, written in batches on global rank zero."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prec.errors import ConfigurationError

if TYPE_CHECKING:
    from prec.trainer import Trainer

_FIXED_COLUMNS = ("step", "epoch")


class CSVLogger:
    """Write logged metrics to ``{save_dir}/{name}/version_{n}/metrics.csv``.

    Rows are buffered as tensors (``log_row`` is a list append, no device sync) and written every
    ``flush_every_n_steps`` steps, at the end of each epoch and when the run ends. Only global rank zero writes.

    Args:
        save_dir: the root folder; ``None`` uses the Trainer's ``default_root_dir``.
        name: the subfolder for this experiment.
        version: an int (``version_{n}``), a folder name, or ``None`` for the next free ``version_{n}``.
        flush_every_n_steps: how many steps' rows are kept in memory before they are written.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        name: str = "prec_logs",
        version: int | str | None = None,
        flush_every_n_steps: int = 100,
    ) -> None:
        if not isinstance(flush_every_n_steps, int) or flush_every_n_steps < 1:
            raise ConfigurationError(f"flush_every_n_steps={flush_every_n_steps!r} must be a positive int.")
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.name = name
        self._version = version
        self.flush_every_n_steps = flush_every_n_steps
        self.enabled = True
        #: Buffered rows ``(step, epoch, {name: tensor or float})``, written by :meth:`flush`.
        self.rows: list[tuple[int, int, dict[str, Any]]] = []
        self._columns: list[str] = []
        self._resolved_dir: Path | None = None

    # -- paths ----------------------------------------------------------------------------------------------
    def setup(self, default_root_dir: Path, enabled: bool) -> None:
        """Called by the Trainer at the start of a run: fixes the folder and whether this process writes."""
        if self.save_dir is None:
            self.save_dir = default_root_dir
        self.enabled = enabled

    @property
    def log_dir(self) -> Path:
        if self._resolved_dir is None:
            if self.save_dir is None:
                raise ConfigurationError("CSVLogger has no save_dir yet: pass one or attach it to a Trainer.")
            root = self.save_dir / self.name
            version = self._version
            if version is None:
                version = _next_version(root)
            self._resolved_dir = root / (f"version_{version}" if isinstance(version, int) else str(version))
        return self._resolved_dir

    @property
    def metrics_file(self) -> Path:
        return self.log_dir / "metrics.csv"

    # -- rows -----------------------------------------------------------------------------------------------
    def log_row(self, values: dict[str, Any], step: int, epoch: int) -> None:
        """Buffer ``values`` (owned by the logger from now on) for ``step``; rows of one step merge at flush.

        The training loop appends to :attr:`rows` directly: a list append per step, nothing read back."""
        self.rows.append((step, epoch, values))

    def flush(self) -> None:
        """Write the buffered rows. All tensor values are read back in one go (one device sync per flush)."""
        buffered = list(self.rows)
        self.rows.clear()  # in place: the loop holds a bound ``rows.append``
        if not buffered or not self.enabled:
            return
        merged: dict[tuple[int, int], dict[str, Any]] = {}
        for step, epoch, values in buffered:
            row = merged.get((step, epoch))
            if row is None:
                merged[(step, epoch)] = values
            else:
                row.update(values)
        _read_back(merged.values())
        names = sorted({name for row in merged.values() for name in row})
        new = [name for name in names if name not in self._columns]
        path = self.metrics_file
        path.parent.mkdir(parents=True, exist_ok=True)
        if new or not path.exists():
            # A new column: rewrite the file with the wider header (rows written before keep empty cells).
            old_rows = _read_rows(path) if path.exists() and self._columns else []
            self._columns = [*self._columns, *new]
            header = [*_FIXED_COLUMNS, *self._columns]
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows([row.get(name, "") for name in header] for row in old_rows)
                self._write(writer, merged)
        else:
            with path.open("a", newline="") as handle:
                self._write(csv.writer(handle), merged)

    def _write(self, writer: Any, merged: dict[tuple[int, int], dict[str, Any]]) -> None:
        columns = self._columns
        writer.writerows(
            [step, epoch, *(row.get(name, "") for name in columns)] for (step, epoch), row in merged.items()
        )

    def __repr__(self) -> str:
        return f"CSVLogger(save_dir={str(self.save_dir)!r}, name={self.name!r})"


def _next_version(root: Path) -> int:
    if not root.is_dir():
        return 0
    versions = [int(p.name[8:]) for p in root.iterdir() if p.name.startswith("version_") and p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def _read_back(rows: Any) -> None:
    """Replace tensor values by floats in place, with one ``tolist()`` for all of them where they share a device."""
    cells = [(row, name, value) for row in rows for name, value in row.items() if isinstance(value, torch.Tensor)]
    if not cells:
        return
    try:
        floats = torch.stack([value.reshape(()).float() for _, _, value in cells]).tolist()
    except RuntimeError:  # tensors on several devices: read them one by one
        floats = [float(value.item()) for _, _, value in cells]
    for (row, name, _), number in zip(cells, floats, strict=True):
        row[name] = number


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- the Trainer's side ------------------------------------------------------------------------------------
def record_precision_metrics(trainer: Trainer) -> None:
    """Log the precision's own numbers (loss scale, skipped steps). Reading them syncs with the device, so this
    runs at log flushes, progress-bar refreshes and epoch ends, never per step."""
    values = trainer.precision_plugin.metrics()
    if values:
        trainer.state.metrics.record(values, prog_bar=True)


def flush_logs(trainer: Trainer, training: bool) -> None:
    """Write buffered metric rows (with the precision's numbers when training)."""
    if training:
        record_precision_metrics(trainer)
    logger = trainer.logger
    if logger is None:
        return
    if trainer.state.metrics.pending and trainer.strategy.is_global_zero:
        logger.log_row(trainer.state.metrics.take_pending(), max(trainer.global_step - 1, 0), trainer.current_epoch)
    logger.flush()


def log_results(trainer: Trainer, results: dict[str, Any]) -> None:
    """One metrics-file row for epoch-level results (and anything still pending)."""
    logger = trainer.logger
    if logger is not None and trainer.strategy.is_global_zero:
        row = {**trainer.state.metrics.take_pending(), **results}
        if row:
            logger.log_row(row, max(trainer.global_step - 1, 0), trainer.current_epoch)
