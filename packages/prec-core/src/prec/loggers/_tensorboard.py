"""TensorBoard event files through ``torch.utils.tensorboard`` (needs ``pip install 'prec-core[tensorboard]'``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from prec.errors import ConfigurationError
from prec.loggers._folder import FolderLogger
from prec.loggers._paths import raise_full


class TensorBoardLogger(FolderLogger):
    """Write logged metrics as TensorBoard scalars to ``{save_dir}/{name}/version_{n}/``.

    Every ``self.log`` value with ``logger=True`` becomes a scalar at its step, as do the precision's own
    numbers (``loss_scale``, ``skipped_steps``) and ``epoch``. :meth:`log_hyperparams` writes the HPARAMS tab.
    Only global rank zero writes; the folder is checked at the run's start.

    Args:
        save_dir: the root folder; ``None`` uses the Trainer's ``default_root_dir``.
        name: the subfolder for this experiment (the same as a CSVLogger's puts both in one folder).
        version: an int (``version_{n}``), a folder name, or ``None`` for the next ``version_{n}`` without
            event files.
        flush_every_n_steps: how many steps' rows are kept in memory before they are written.
        hparams: hyper-parameters to write at the run's start (see :meth:`log_hyperparams`).
    """

    marker = "events.out.tfevents.*"

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        name: str = "prec_logs",
        version: int | str | None = None,
        flush_every_n_steps: int = 100,
        hparams: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(save_dir, name, version, flush_every_n_steps)
        if hparams is not None and not isinstance(hparams, Mapping):
            raise ConfigurationError(
                f"TensorBoardLogger(hparams={hparams!r}) must be a dict of names to values, or None;"
                f" got {type(hparams).__name__}."
            )
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - fail here, not at the run's start
        except ImportError as error:
            raise ConfigurationError(
                f"TensorBoardLogger needs the tensorboard package: pip install 'prec-core[tensorboard]' ({error})."
            ) from error
        self.hparams = dict(hparams) if hparams is not None else None
        self._writer: Any = None

    @override
    def setup(self, root_dir: Path, is_global_zero: bool) -> None:
        super().setup(root_dir, is_global_zero)
        if is_global_zero and self.hparams:
            self.log_hyperparams(self.hparams)

    @property
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` (opened on first use), for anything beyond scalars."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        writer = self.experiment
        for name, value in metrics.items():
            writer.add_scalar(name, float(value), global_step=step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Write ``params`` (nested mappings flattened with ``/``) to the HPARAMS tab."""
        if not self.enabled:
            return
        flat = {
            key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in _flatten(params).items()
        }
        self.experiment.add_hparams(flat, {}, run_name=".")  # ".": the run's own folder, not a timestamped one

    def flush(self) -> None:
        """Write the buffered rows; a full disk (reported by the writer's thread at the next write or flush) is a
        :class:`~prec.StorageFullError` that stops the run."""
        rows = self.take_rows()
        if not self.enabled:
            return
        try:
            for step, epoch, values in rows:
                self.log_metrics({**values, "epoch": float(epoch)}, step)
            if self._writer is not None:
                self._writer.flush()
        except OSError as error:
            raise_full(error, "TensorBoardLogger", self.log_dir, len(rows))

    def finalize(self, status: str) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                with contextlib.suppress(OSError):  # a full disk was reported by flush(); close what is open
                    writer.close()

    def __repr__(self) -> str:
        return f"TensorBoardLogger(save_dir={str(self.save_dir)!r}, name={self.name!r})"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat
