"""Rows buffered on the hot path and read back from the device in one go at flush time."""

from __future__ import annotations

from typing import Any

import torch

from prec.errors import ConfigurationError

Row = tuple[int, int, dict[str, Any]]


class RowBuffer:
    """The side of a logger the training loop sees: a list it appends ``(step, epoch, values)`` to (no device
    sync per step) and ``flush_every_n_steps``. :meth:`take_rows` merges the rows of each step and turns
    tensors into floats with one read-back for all of them."""

    def __init__(self, flush_every_n_steps: int = 100) -> None:
        if isinstance(flush_every_n_steps, bool) or not isinstance(flush_every_n_steps, int) or flush_every_n_steps < 1:
            raise ConfigurationError(f"flush_every_n_steps={flush_every_n_steps!r} must be a positive int.")
        self.flush_every_n_steps = flush_every_n_steps
        #: Buffered rows ``(step, epoch, {name: tensor or float})``; the loop holds a bound ``rows.append``.
        self.rows: list[Row] = []

    def log_row(self, values: dict[str, Any], step: int, epoch: int) -> None:
        """Buffer ``values`` (owned by the logger from now on) for ``step``; rows of one step merge at flush."""
        self.rows.append((step, epoch, values))

    def take_rows(self) -> list[tuple[int, int, dict[str, float]]]:
        """The buffered rows, one per (step, epoch) in first-seen order, with floats; the buffer is emptied."""
        buffered = list(self.rows)
        self.rows.clear()  # in place: the loop holds a bound ``rows.append``
        merged: dict[tuple[int, int], dict[str, Any]] = {}
        for step, epoch, values in buffered:
            row = merged.get((step, epoch))
            if row is None:
                merged[(step, epoch)] = dict(values)
            else:
                row.update(values)
        read_back(merged.values())
        return [(step, epoch, row) for (step, epoch), row in merged.items()]


def read_back(rows: Any) -> None:
    """Replace tensor values by floats in place, with one ``tolist()`` for all of them where they share a device."""
    cells = [(row, name, value) for row in rows for name, value in row.items() if isinstance(value, torch.Tensor)]
    if not cells:
        return
    try:
        floats = torch.stack([value.detach().reshape(()).float() for _, _, value in cells]).tolist()
    except RuntimeError:  # tensors on several devices: read them one by one
        floats = [float(value.item()) for _, _, value in cells]
    for (row, name, _), number in zip(cells, floats, strict=True):
        row[name] = number
