"""Metric bookkeeping behind ``self.log``: a dictionary write per call, device syncs only when read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class MetricStore:
    """Latest step values and per-epoch lists, keyed by name; values stay tensors until someone reads them."""

    def __init__(self) -> None:
        self.training = True
        self.step_values: dict[str, Tensor | float] = {}
        self.epoch_values: dict[str, list[Tensor | float]] = {}
        self.epoch_results: dict[str, Tensor] = {}
        self.prog_bar: set[str] = set()
        self.logged: set[str] = set()
        self.dirty = False
        self.listeners: list[Callable[[dict[str, float]], None]] = []

    def log(
        self,
        name: str,
        value: Tensor | float | int,
        prog_bar: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        logger: bool,
    ) -> None:
        if type(value) is Tensor or isinstance(value, Tensor):
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
            self.dirty = True
        if on_epoch if on_epoch is not None else not training:
            values = self.epoch_values.get(name)
            if values is None:
                self.epoch_values[name] = [value]
            else:
                values.append(value)
        if prog_bar:
            self.prog_bar.add(name)
        if logger:
            self.logged.add(name)

    def end_epoch(self) -> dict[str, Tensor]:
        """Average the epoch values (mean over the steps that logged them) and start a new epoch."""
        results = {name: _mean(values) for name, values in self.epoch_values.items() if values}
        self.epoch_results.update(results)
        self.epoch_values = {}
        return results

    def callback_metrics(self) -> dict[str, Tensor]:
        metrics = {name: _as_tensor(value) for name, value in self.step_values.items()}
        metrics.update(self.epoch_results)
        return metrics

    def progress_bar_metrics(self) -> dict[str, float]:
        values = {**self.step_values, **self.epoch_results}
        return {name: _as_float(values[name]) for name in self.prog_bar if name in values}

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _as_tensor(value: Tensor | float) -> Tensor:
    return value.float().cpu() if isinstance(value, Tensor) else torch.tensor(value)


def _as_float(value: Tensor | float) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _mean(values: list[Tensor | float]) -> Tensor:
    return torch.stack([_as_tensor(value).reshape(()) for value in values]).mean()


def _as_dict(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: _as_float(value) for name, value in metrics.items()}
