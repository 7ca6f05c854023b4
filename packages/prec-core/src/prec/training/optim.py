"""Parse what ``configure_optimizers`` returns into optimizers and scheduler configs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from prec.errors import ConfigurationError
from prec.training.config import check_clipping

if TYPE_CHECKING:
    from prec.model.trainer_view import TrainerView


@dataclass
class LRSchedulerConfig:
    """One LR scheduler and when to step it (``interval`` ``"epoch"`` or ``"step"``, every ``frequency``)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    optimizer: torch.optim.Optimizer | None = None
    #: The name LearningRateMonitor logs it under (``{"scheduler": ..., "name": ...}``).
    name: str | None = None


def parse_optimizers(config: Any) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Accept an optimizer, a list of them, a dict with ``optimizer``/``lr_scheduler``, a list of such dicts, or
    ``([optimizers], [schedulers])``."""
    optimizers: list[torch.optim.Optimizer] = []
    schedulers: list[LRSchedulerConfig] = []
    if isinstance(config, torch.optim.Optimizer):
        optimizers = [config]
    elif isinstance(config, Mapping):
        _parse_dict(config, optimizers, schedulers)
    elif (
        isinstance(config, tuple)
        and len(config) == 2
        and isinstance(config[0], Sequence)
        and all(isinstance(item, torch.optim.Optimizer) for item in config[0])
    ):
        optimizers = list(config[0])
        schedulers = [_scheduler_config(item) for item in config[1]]
    elif isinstance(config, Sequence) and config:
        for item in config:
            if isinstance(item, torch.optim.Optimizer):
                optimizers.append(item)
            elif isinstance(item, Mapping):
                _parse_dict(item, optimizers, schedulers)
            else:
                raise _bad(config)
    else:
        raise _bad(config)
    for scheduler in schedulers:
        if scheduler.optimizer is None:
            scheduler.optimizer = getattr(scheduler.scheduler, "optimizer", None)
    return optimizers, schedulers


def _parse_dict(
    config: Mapping[str, Any], optimizers: list[torch.optim.Optimizer], schedulers: list[LRSchedulerConfig]
) -> None:
    optimizer = config.get("optimizer")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _bad(config)
    unknown = set(config) - {"optimizer", "lr_scheduler", "monitor"}
    if unknown:
        raise ConfigurationError(f"configure_optimizers() dict has unknown keys {sorted(unknown)}.")
    optimizers.append(optimizer)
    if config.get("lr_scheduler") is not None:
        scheduler = _scheduler_config(config["lr_scheduler"], config.get("monitor"))
        scheduler.optimizer = optimizer
        schedulers.append(scheduler)


def _scheduler_config(item: Any, monitor: str | None = None) -> LRSchedulerConfig:
    if isinstance(item, Mapping):
        if "scheduler" not in item:
            raise ConfigurationError("an lr_scheduler dict needs a 'scheduler' key.")
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "name"}
        if unknown:
            raise ConfigurationError(f"lr_scheduler dict has unknown keys {sorted(unknown)}.")
        interval = item.get("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ConfigurationError(f"lr_scheduler interval={interval!r} must be 'epoch' or 'step'.")
        frequency = int(item.get("frequency", 1))
        if frequency < 1:
            raise ConfigurationError(f"lr_scheduler frequency={frequency} must be >= 1.")
        return LRSchedulerConfig(
            item["scheduler"], interval, frequency, item.get("monitor", monitor), name=item.get("name")
        )
    if not hasattr(item, "step"):
        raise ConfigurationError(f"{item!r} is not an LR scheduler (it has no step()).")
    return LRSchedulerConfig(item, monitor=monitor)


def _bad(config: Any) -> ConfigurationError:
    return ConfigurationError(
        f"configure_optimizers() returned {type(config).__name__}; return an optimizer, a list of optimizers,"
        " or {'optimizer': ..., 'lr_scheduler': ...}."
    )


def step_schedulers(trainer: TrainerView, interval: str, monitored: bool | None = None) -> None:
    """Step the schedulers of ``interval`` whose frequency is due (not after a skipped optimizer step), through
    the module's ``lr_scheduler_step`` when it overrides it. ``monitored``: only the schedulers that monitor a
    metric (``True``), only the others (``False``), or all (``None``)."""
    precision = trainer.precision_plugin
    model = trainer.model
    custom = model is not None and type(model).lr_scheduler_step is not _default_scheduler_step()
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval:
            continue
        if monitored is not None and (config.monitor is not None) != monitored:
            continue
        # A skipped optimizer step (inf/NaN gradients under a grad scaler) must not advance the schedule.
        if interval == "step" and precision.step_skipped:
            continue
        counter = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        if counter % config.frequency:
            continue
        if config.monitor is not None:
            metrics = trainer.callback_metrics
            if config.monitor not in metrics:
                raise ConfigurationError(
                    f"the LR scheduler monitors {config.monitor!r}, which was not logged; logged: {sorted(metrics)}."
                )
            metric = metrics[config.monitor]
        else:
            metric = None
        if custom:
            model.lr_scheduler_step(config.scheduler, metric)  # type: ignore[union-attr]
        elif metric is None:
            config.scheduler.step()
        else:
            config.scheduler.step(metric)


def _default_scheduler_step() -> Any:
    from prec.model.module import TrainingModule

    return TrainingModule.lr_scheduler_step


class StepOptimizer:
    """The optimizer handed to a module's ``optimizer_step`` hook: ``step(closure=...)`` runs the closure (which
    returns the loss prec already computed) and steps through the precision (grad scaler, non-finite guard)."""

    def __init__(self, optimizer: torch.optim.Optimizer, precision: Any, update: bool) -> None:
        self.optimizer = optimizer
        self._precision = precision
        self._update = update

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        result = closure() if closure is not None else None
        self._precision.optimizer_step(self.optimizer, update=self._update, **kwargs)
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def _before_optimizer_step(precision: Any, optimizer: Any, hooks: list[Callable[..., Any]]) -> None:
    precision.unscale_gradients(optimizer)  # hooks see true gradients, not scaled ones
    for hook in hooks:
        hook(optimizer)


def _closure_then_hooks(
    closure: Callable[[], Any], precision: Any, optimizer: Any, hooks: list[Callable[..., Any]]
) -> Any:
    result = closure()
    _before_optimizer_step(precision, optimizer, hooks)
    return result


class ManualOptimizer:
    """Wraps an optimizer for manual optimization: ``step()`` goes through the precision (grad scaler)."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: TrainerView) -> None:
        self.optimizer = optimizer
        self._trainer = trainer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """One grad-scaler step per call; the scale is updated once after ``training_step`` (or before a second
        step of the same optimizer within it, which the scaler cannot take without an update)."""
        trainer = self._trainer
        state = trainer.state
        precision = trainer.precision_plugin
        stepped = state.manual_stepped
        if id(self.optimizer) in stepped:
            precision.update_scaler()
            stepped.clear()
        stepped.add(id(self.optimizer))
        before_step = state.hooks.get("on_before_optimizer_step")
        if before_step:  # Lightning's order: the closure (backward), then the hook on true gradients, then step
            if closure is not None:
                closure = partial(_closure_then_hooks, closure, precision, self.optimizer, before_step)
            else:
                _before_optimizer_step(precision, self.optimizer, before_step)
        result = precision.optimizer_step(self.optimizer, closure, update=False, **kwargs)
        state.global_step += 1  # an optimizer step, as Lightning counts it under manual optimization
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Iterator[None]:
        """Lightning's idiom: inside, only this optimizer's parameters require gradients (``toggle_optimizer``),
        and with ``sync_grad=False`` the backward calls keep their gradients on this process
        (``TrainingModule.no_backward_sync``): for the micro-batches before the one that steps."""
        model = self._trainer.model
        if model is None:
            raise RuntimeError("toggle_model() needs the Trainer's model: call it inside training_step.")
        with model.no_backward_sync(enabled=not sync_grad):
            model.toggle_optimizer(self)
            try:
                yield
            finally:
                model.untoggle_optimizer(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def clip_with_settings(
    trainer: TrainerView, optimizer: Any, gradient_clip_val: float | None, gradient_clip_algorithm: str | None
) -> torch.Tensor | None:
    """``trainer.clip_gradients``: the Trainer's clipping settings unless given here (two different values is an
    error, so a setting is never overridden silently), then the precision's clipping (unscaled gradients)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    for name, own, given in (
        ("gradient_clip_val", trainer.gradient_clip_val, gradient_clip_val),
        ("gradient_clip_algorithm", trainer.gradient_clip_algorithm, gradient_clip_algorithm),
    ):
        if own is not None and given is not None and own != given:
            raise ConfigurationError(
                f"Trainer({name}={own!r}) and clip_gradients({name}={given!r}) both set it; set it in one place."
            )
    value, algorithm = check_clipping(
        gradient_clip_val if gradient_clip_val is not None else trainer.gradient_clip_val,
        gradient_clip_algorithm or trainer.gradient_clip_algorithm,
    )
    return trainer.precision_plugin.clip_gradients(optimizer, value, algorithm or "norm")  # type: ignore[no-any-return]
