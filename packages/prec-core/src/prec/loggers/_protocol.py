"""The logger protocol: the few methods prec calls on a logger, so any object that has them is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Logger(Protocol):
    """What prec calls on a logger. Only :meth:`log_metrics` is required; the others are called when present.

    - ``log_metrics(metrics, step)``: a batch of logged values, already plain floats (prec reads tensors back
      from the device once per flush, never per step); ``metrics["epoch"]`` is the epoch. Called on global rank
      zero only, every ``flush_every_n_steps`` steps (the smallest of the loggers' own attribute of that name,
      default 100), at each epoch's end and when the run ends.
    - ``setup(root_dir: Path, is_global_zero: bool)``: once at the start of every run, on every process, before
      training: the place to create folders and to fail early (an unwritable folder is a ConfigurationError).
    - ``log_hyperparams(params: Mapping[str, Any])``: the run's hyper-parameters.
    - ``flush()``: after each batch of ``log_metrics`` calls: write what is buffered.
    - ``finalize(status: str)``: once when the run ends (``"success"`` or ``"failed"``): close files.
    """

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def call_optional(logger: Any, method: str, *args: Any) -> None:
    """Call ``logger.method(*args)`` when the logger has that method."""
    bound = getattr(logger, method, None)
    if callable(bound):
        bound(*args)


def version_dir(save_dir: Path, name: str, version: int | str | None, taken: str) -> Path:
    """``save_dir/name/version_{n}``: ``n`` is the first whose folder holds no file matching ``taken`` yet, so
    a CSV and a TensorBoard logger of the same run share one folder."""
    root = save_dir / name
    if version is None:
        used = [
            int(path.name[8:])
            for path in (root.iterdir() if root.is_dir() else ())
            if path.name.startswith("version_") and path.name[8:].isdigit() and any(path.glob(taken))
        ]
        version = max(used, default=-1) + 1
    return root / (f"version_{version}" if isinstance(version, int) else str(version))
