"""Metric bookkeeping behind ``self.log``: a dictionary write per call, device syncs and collectives only when read.

Lightning's rules, so ported numbers match:

* ``on_step`` and ``on_epoch`` both true: the step values are named ``<name>_step``, the epoch value
  ``<name>_epoch`` (in the logger and the progress bar); ``callback_metrics`` has both and ``<name>`` (the latest
  step value during the epoch, the epoch value after it).
* An epoch value with ``reduce_fx="mean"`` is the mean weighted by batch size: ``sum(value * batch_size) /
  sum(batch_size)``. The batch size is ``batch_size=`` when given, else the first dimension of the first tensor in
  the current batch (the loop hands the batch over as :attr:`MetricStore.current_batch`), else 1.
* ``"sum"``, ``"max"``, ``"min"`` reduce the epoch's values without weights.

Across ranks: epoch values are reduced over every rank at the epoch's end with their ``reduce_fx`` (the mean
weighted by every rank's batch sizes), so ``validate()``/``test()`` results, ``callback_metrics`` and checkpoint
monitoring agree on every rank; ``sync_dist=False`` keeps a value rank-local. A step value is reduced only with
``sync_dist=True`` (then at every ``self.log`` call: a collective per call, which the user asked for).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prec.errors import ConfigurationError

if TYPE_CHECKING:
    from prec.strategies.base import Strategy

_Value = Tensor | float
REDUCE_FX = ("mean", "sum", "max", "min")
#: Lightning's accepted ``reduce_fx`` values (strings in any case, ``"avg"``, torch's and Python's functions).
_FX_ALIASES: dict[Any, str] = {
    "mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min", sum: "sum", max: "max", min: "min",
}  # fmt: skip


class MetricStore:
    """Latest step values and per-epoch lists, keyed by name; values stay tensors until someone reads them.

    ``pending`` holds what was logged with ``logger=True`` since the loop last took it: the loop hands it to the
    metrics file as one row per step (the dict is handed over whole, never copied value by value).
    """

    def __init__(self, strategy: Strategy | None = None) -> None:
        self.training = True
        #: Reduces epoch values across ranks (``Strategy.reduce``); ``None``: this process alone.
        self.strategy = strategy
        #: The batch the current step runs on, set by the loop; batch sizes are inferred from it on demand.
        self.current_batch: Any = None
        #: Added to every name logged while one of several evaluation loaders runs (``/dataloader_idx_1``).
        self.loader_suffix = ""
        self.step_values: dict[str, _Value] = {}
        self.epoch_values: dict[str, list[_Value]] = {}
        self.epoch_weights: dict[str, list[int]] = {}
        #: name -> (reduce_fx, sync_dist, epoch key, logger)
        self.epoch_meta: dict[str, tuple[str, bool | None, str, bool]] = {}
        #: ``torchmetrics.Metric`` objects logged this epoch: computed (if logged on_epoch) and reset at its end.
        self.metric_objects: dict[str, Any] = {}
        #: Everything handed to the loggers (``trainer.logged_metrics``), with the ``_step``/``_epoch`` names.
        self.logged: dict[str, _Value] = {}
        self.epoch_results: dict[str, Tensor] = {}
        self.prog_bar: set[str] = set()
        self.pending: dict[str, _Value] = {}
        self._sized_batch: Any = None
        self._sized_batch_size = 1

    def log(
        self,
        name: str,
        value: Tensor | float | int,
        prog_bar: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        logger: bool,
        sync_dist: bool | None = None,
        reduce_fx: Any = "mean",
        batch_size: int | None = None,
    ) -> None:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"self.log({name!r}, ...) needs a scalar; got a tensor of shape {tuple(value.shape)}.")
            value = value.detach()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif is_metric_object(value):
            self._log_metric_object(name, value, prog_bar, on_step, on_epoch, logger)
            return
        else:
            raise TypeError(
                f"self.log({name!r}, ...) takes a number, a scalar tensor or a torchmetrics.Metric, not"
                f" {type(value).__name__}."
            )
        fx = _FX_ALIASES.get(reduce_fx) if reduce_fx.__hash__ is not None else None  # one lookup per call
        if fx is None:
            fx = reduce_fx_name(name, reduce_fx)
        training = self.training
        step = on_step if on_step is not None else training
        epoch = on_epoch if on_epoch is not None else not training
        suffix = self.loader_suffix
        step_key = epoch_key = name
        if step and epoch:
            step_key, epoch_key = f"{name}_step{suffix}", f"{name}_epoch{suffix}"
        if suffix:  # Lightning's names under several loaders: val_loss/dataloader_idx_1, val_loss_step/dataloader…
            name = name + suffix
            if not (step and epoch):
                step_key = epoch_key = name
        if step:
            if sync_dist and self.strategy is not None and self.strategy.world_size > 1:
                value = self.strategy.reduce(_on_device(value, self.strategy), fx)  # asked for: once per call
            if training:  # as Lightning: evaluation step values go to the loggers, not to callback_metrics
                self.step_values[step_key] = value
                if step_key is not name:
                    self.step_values[name] = value
                    self.epoch_results.pop(name, None)  # the plain name is this epoch's step value again
                if prog_bar:
                    self.prog_bar.add(step_key)
            if logger:
                self.pending[step_key] = value
        if epoch:
            values = self.epoch_values.get(name)
            if values is None:
                self.epoch_values[name] = values = []
                self.epoch_weights[name] = []
            values.append(value)
            if fx == "mean":
                self.epoch_weights[name].append(batch_size if batch_size is not None else self._batch_size())
            self.epoch_meta[name] = (fx, sync_dist, epoch_key, logger)
            if prog_bar:
                self.prog_bar.add(epoch_key)

    def _log_metric_object(
        self, name: str, metric: Any, prog_bar: bool, on_step: bool | None, on_epoch: bool | None, logger: bool
    ) -> None:
        """A ``torchmetrics.Metric``, as Lightning logs one: the value of its last forward call as the step value;
        ``compute()`` at the epoch's end (then ``reset()``) as the epoch value. The metric synchronises itself
        across ranks."""
        training = self.training
        step = on_step if on_step is not None else training
        epoch = on_epoch if on_epoch is not None else not training
        suffix = self.loader_suffix
        key = name + suffix if suffix else name
        self.metric_objects[key] = metric
        if step:
            cached = getattr(metric, "_forward_cache", None)
            if isinstance(cached, Tensor) and cached.numel() == 1:
                self.log(f"{name}_step" if epoch else name, cached, prog_bar, True, False, logger)  # adds the suffix
        if epoch:
            self.epoch_meta[key] = ("metric", False, f"{name}_epoch{suffix}" if step else key, logger)
            if prog_bar:
                self.prog_bar.add(self.epoch_meta[key][2])

    def _batch_size(self) -> int:
        batch = self.current_batch
        if batch is None:
            return 1
        if batch is not self._sized_batch:
            self._sized_batch, self._sized_batch_size = batch, infer_batch_size(batch)
        return self._sized_batch_size

    def take_pending(self) -> dict[str, _Value]:
        """The values logged since the last call (for one metrics-file row), and start a new row."""
        pending = self.pending
        self.pending = {}
        self.logged.update(pending)
        return pending

    def update_callback_metrics(self, values: Mapping[str, float]) -> None:
        """Values a callback publishes for other callbacks to monitor (LearningRateMonitor's ``lr-SGD``): in
        ``callback_metrics``, not written to the loggers again."""
        self.step_values.update(values)

    def logged_metrics(self) -> dict[str, Tensor]:
        """What was handed to the loggers (Lightning's ``trainer.logged_metrics``)."""
        return {name: _as_tensor(value) for name, value in self.logged.items()}

    def record(self, values: dict[str, float], prog_bar: bool = False) -> None:
        """Log numbers the Trainer itself produces (the precision's loss scale and skipped steps)."""
        self.step_values.update(values)
        self.pending.update(values)
        if prog_bar:
            self.prog_bar.update(values)

    def end_epoch(self) -> dict[str, Tensor]:
        """Reduce the epoch's values (over the epoch, then over the ranks) and start a new epoch. Every rank
        calls it at the same point: under several processes it is a collective."""
        local = {name: _reduce_locally(values, self.epoch_weights[name], self.epoch_meta[name][0])
                 for name, values in self.epoch_values.items() if values}  # fmt: skip
        strategy = self.strategy
        if strategy is not None and strategy.world_size > 1:
            weights = {name: float(sum(self.epoch_weights[name]) or len(self.epoch_values[name])) for name in local}
            local = _reduce_across_ranks(local, weights, self.epoch_meta, strategy)
        for name, metric in self.metric_objects.items():
            if name in self.epoch_meta:
                local[name] = _as_tensor(metric.compute()).reshape(())
            metric.reset()
        results: dict[str, Tensor] = {}
        for name, value in local.items():
            _, _, epoch_key, logged = self.epoch_meta[name]
            results[epoch_key] = value
            self.epoch_results[epoch_key] = value
            if epoch_key != name:
                self.epoch_results[name] = value
            if logged:
                self.logged[epoch_key] = value
        self.epoch_values = {}
        self.epoch_weights = {}
        self.epoch_meta = {}
        self.metric_objects = {}
        return results

    def begin_evaluation(self) -> tuple[Any, ...]:
        """Set the training epoch's values aside, so a validation run averages only its own."""
        saved = (self.epoch_values, self.epoch_weights, self.epoch_meta, self.metric_objects)
        self.epoch_values, self.epoch_weights, self.epoch_meta, self.metric_objects = {}, {}, {}, {}
        return saved

    def end_evaluation(self, saved: tuple[Any, ...]) -> None:
        self.epoch_values, self.epoch_weights, self.epoch_meta, self.metric_objects = saved

    def callback_metrics(self) -> dict[str, Tensor]:
        metrics = {name: _as_tensor(value) for name, value in self.step_values.items()}
        metrics.update(self.epoch_results)
        return metrics

    def progress_bar_metrics(self) -> dict[str, float]:
        values = {**self.step_values, **self.epoch_results}
        return {name: _as_float(values[name]) for name in self.prog_bar if name in values}

    def reset(self) -> None:
        self.__init__(self.strategy)  # type: ignore[misc]


def reduce_fx_name(name: str, reduce_fx: Any) -> str:
    """``reduce_fx`` as one of :data:`REDUCE_FX`; anything else is a ConfigurationError naming what is accepted."""
    if isinstance(reduce_fx, str):
        fx = _FX_ALIASES.get(reduce_fx.lower())
    else:
        fx = _FX_ALIASES.get(reduce_fx) if reduce_fx.__hash__ is not None else None
    if fx is None:
        raise ConfigurationError(
            f"self.log({name!r}, reduce_fx={reduce_fx!r}): reduce_fx must be one of {', '.join(REDUCE_FX)} (in any"
            " case, or 'avg'), or torch.mean, torch.sum/sum, torch.max/max, torch.min/min; for another reduction,"
            " log a torchmetrics.Metric."
        )
    return fx


def is_metric_object(value: Any) -> bool:
    """A ``torchmetrics.Metric`` (recognised by its interface, so torchmetrics stays optional)."""
    return (
        callable(getattr(value, "compute", None))
        and callable(getattr(value, "update", None))
        and callable(getattr(value, "reset", None))
    )


def infer_batch_size(batch: Any) -> int:
    """The first dimension of the first tensor in ``batch`` (a 0-d tensor counts 1); 1 when there is none."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if isinstance(item, (Tensor, Mapping, list, tuple)):
                return infer_batch_size(item)
    return 1


def _result_dtype(values: list[_Value]) -> torch.dtype:
    return torch.float64 if any(isinstance(v, Tensor) and v.dtype == torch.float64 for v in values) else torch.float32


def _reduce_locally(values: list[_Value], weights: list[int], fx: str) -> Tensor:
    """One epoch value from this rank's values (Lightning's arithmetic: a running sum in the value's dtype)."""
    dtype = _result_dtype(values)
    stacked = torch.stack([_as_tensor(value).reshape(()).to(dtype) for value in values])
    if fx == "mean":
        weight = torch.tensor(weights, dtype=dtype)
        if len(set(weights)) == 1:
            return stacked.mean()  # equal batches: the plain mean, exactly
        return (stacked * weight).sum() / weight.sum()
    if fx == "sum":
        return stacked.sum()
    return stacked.max() if fx == "max" else stacked.min()


def _reduce_across_ranks(
    local: dict[str, Tensor],
    weight_of: dict[str, float],
    meta: dict[str, tuple[str, bool | None, str, bool]],
    strategy: Strategy,
) -> dict[str, Tensor]:
    """Reduce the values not logged with ``sync_dist=False`` over the ranks: one collective to agree on the
    names, then one per kind of reduction."""
    names = sorted(name for name in local if meta[name][1] is not False)
    gathered = strategy.all_gather_object([(name, meta[name][0]) for name in names])
    if any(entry != gathered[0] for entry in gathered):
        raise ConfigurationError(
            "ranks logged different epoch metrics, so they cannot be reduced across ranks: "
            + "; ".join(f"rank {rank}: {[n for n, _ in entry]}" for rank, entry in enumerate(gathered))
            + ". Log the same names with the same reduce_fx on every rank, or pass sync_dist=False for a"
            " rank-local value."
        )
    result = dict(local)
    by_fx: dict[str, list[str]] = {}
    for name in names:
        by_fx.setdefault(meta[name][0], []).append(name)
    device = strategy.root_device
    for fx, group in by_fx.items():
        if fx == "mean":  # weighted over every rank's batches: reduce sum(v * w) and sum(w)
            columns = [local[name].double() * weight_of[name] for name in group]
            columns += [torch.tensor(weight_of[name], dtype=torch.float64) for name in group]
            totals = strategy.reduce(torch.stack(columns).to(device), "sum").cpu()
            for index, name in enumerate(group):
                result[name] = (totals[index] / totals[len(group) + index]).to(local[name].dtype)
        else:
            stacked = torch.stack([local[name].double() for name in group]).to(device)
            totals = strategy.reduce(stacked, fx).cpu()
            for index, name in enumerate(group):
                result[name] = totals[index].to(local[name].dtype)
    return result


def _on_device(value: _Value, strategy: Strategy) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(strategy.root_device)
    return torch.tensor(value, dtype=torch.float32, device=strategy.root_device)


def _as_tensor(value: _Value) -> Tensor:
    """A CPU tensor; 16-bit values widen to float32, float64 (64-true) keeps its digits."""
    if not isinstance(value, Tensor):
        return torch.tensor(value, dtype=torch.float32)
    if value.dtype in (torch.float16, torch.bfloat16) or not value.is_floating_point():
        value = value.float()
    return value.cpu()


def _as_float(value: _Value) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)
