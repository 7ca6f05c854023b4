"""Metric bookkeeping behind ``self.log``: a dictionary write per call, device syncs only when read."""

from __future__ import annotations

import torch
from torch import Tensor

_Value = Tensor | float


class MetricStore:
    """Latest step values and per-epoch lists, keyed by name; values stay tensors until someone reads them.

    ``pending`` holds what was logged with ``logger=True`` since the loop last took it: the loop hands it to the
    metrics file as one row per step (the dict is handed over whole, never copied value by value).
    """

    def __init__(self) -> None:
        self.training = True
        self.step_values: dict[str, _Value] = {}
        self.epoch_values: dict[str, list[_Value]] = {}
        self.epoch_results: dict[str, Tensor] = {}
        self.prog_bar: set[str] = set()
        self.pending: dict[str, _Value] = {}

    def log(
        self,
        name: str,
        value: Tensor | float | int,
        prog_bar: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        logger: bool,
    ) -> None:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"self.log({name!r}, ...) needs a scalar; got a tensor of shape {tuple(value.shape)}.")
            value = value.detach()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise TypeError(f"self.log({name!r}, ...) takes a number or a scalar tensor, not {type(value).__name__}.")
        training = self.training
        if on_step if on_step is not None else training:
            self.step_values[name] = value
            if logger:
                self.pending[name] = value
        if on_epoch if on_epoch is not None else not training:
            values = self.epoch_values.get(name)
            if values is None:
                self.epoch_values[name] = [value]
            else:
                values.append(value)
        if prog_bar:
            self.prog_bar.add(name)

    def take_pending(self) -> dict[str, _Value]:
        """The values logged since the last call (for one metrics-file row), and start a new row."""
        pending = self.pending
        self.pending = {}
        return pending

    def record(self, values: dict[str, float], prog_bar: bool = False) -> None:
        """Log numbers the Trainer itself produces (the precision's loss scale and skipped steps)."""
        self.step_values.update(values)
        self.pending.update(values)
        if prog_bar:
            self.prog_bar.update(values)

    def end_epoch(self) -> dict[str, Tensor]:
        """Average the epoch values (mean over the steps that logged them) and start a new epoch."""
        results = {name: _mean(values) for name, values in self.epoch_values.items() if values}
        self.epoch_results.update(results)
        self.epoch_values = {}
        return results

    def begin_evaluation(self) -> dict[str, list[_Value]]:
        """Set the training epoch's values aside, so a validation run averages only its own."""
        saved = self.epoch_values
        self.epoch_values = {}
        return saved

    def end_evaluation(self, saved: dict[str, list[_Value]]) -> None:
        self.epoch_values = saved

    def callback_metrics(self) -> dict[str, Tensor]:
        metrics = {name: _as_tensor(value) for name, value in self.step_values.items()}
        metrics.update(self.epoch_results)
        return metrics

    def progress_bar_metrics(self) -> dict[str, float]:
        values = {**self.step_values, **self.epoch_results}
        return {name: _as_float(values[name]) for name in self.prog_bar if name in values}

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _as_tensor(value: _Value) -> Tensor:
    """A CPU tensor; 16-bit values widen to float32, float64 (64-true) keeps its digits."""
    if not isinstance(value, Tensor):
        return torch.tensor(value, dtype=torch.float32)
    if value.dtype in (torch.float16, torch.bfloat16) or not value.is_floating_point():
        value = value.float()
    return value.cpu()


def _as_float(value: _Value) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _mean(values: list[_Value]) -> Tensor:
    return torch.stack([_as_tensor(value).reshape(()) for value in values]).mean()
