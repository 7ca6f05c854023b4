"""Hook plumbing shared by the training and evaluation loops.

Hooks nobody overrode are never called: each loop asks for the callers of a hook once per run and, per batch,
pays a falsy check when the list is empty. A hook prec does not call is never ignored silently either: a module or
callback overriding one is refused at the start of the run, naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from prec.errors import ConfigurationError
from prec.model.callback import Callback, uncalled_overrides

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

#: Every callback hook the Trainer calls (all of :class:`prec.Callback`'s).
CALLED_CALLBACK_HOOKS = frozenset(
    name for name in vars(Callback) if name.startswith("on_") or name in ("setup", "teardown")
)

#: Lightning module hooks prec does not call, with what to do instead: a module overriding one is refused.
UNCALLED_MODULE_HOOKS: dict[str, str] = {
    "backward": "prec runs backward through the precision (loss scaling); use on_before_backward/on_after_backward",
    "on_validation_model_eval": "prec puts the model in eval mode itself; use on_validation_start",
    "on_validation_model_train": "prec gives each submodule its own mode back itself; use on_validation_end",
    "on_validation_model_zero_grad": "prec does not zero gradients around validation",
    "on_test_model_eval": "prec puts the model in eval mode itself; use on_test_start",
    "on_test_model_train": "use on_test_end",
    "on_predict_model_eval": "prec puts the model in eval mode itself; use on_predict_start",
    "configure_sharded_model": "rename it configure_model (Lightning 2's name, which prec calls)",
    "configure_callbacks": "pass the callbacks to Trainer(callbacks=[...])",
}


def hook_callers(trainer: TrainerView, model: TrainingModule, name: str) -> list[Callable[..., Any]]:
    """Bound hook calls for ``name``: overridden callback hooks first, then the module's, if overridden."""

    base = getattr(Callback, name, None)
    callbacks = [c for c in trainer.callbacks if base is not None and getattr(type(c), name) is not base]
    after_module = []
    if name == "on_train_epoch_end":  # Lightning's order: monitoring callbacks see what the module logged there
        after_module = [c for c in callbacks if c.is_monitoring_callback]
        callbacks = [c for c in callbacks if not c.is_monitoring_callback]
    callers: list[Callable[..., Any]] = [partial(getattr(c, name), trainer, model) for c in callbacks]
    own = module_override(model, name)
    if own is not None:
        callers.append(own)
    callers += [partial(getattr(c, name), trainer, model) for c in after_module]
    return callers


def module_override(model: TrainingModule, name: str) -> Callable[..., Any] | None:
    """``model``'s own ``name``, bound, or ``None`` when it keeps TrainingModule's: as in Lightning, a function
    assigned on the instance (``model.on_train_epoch_end = fn``) is an override and ``None`` assigned there
    (``model.validation_step = None``) means "not overridden"."""
    from prec.model.module import TrainingModule

    if name in model.__dict__:
        return model.__dict__[name]  # type: ignore[no-any-return]
    if getattr(type(model), name, None) is getattr(TrainingModule, name, None):
        return None
    return getattr(model, name)  # type: ignore[no-any-return]


def call(callers: list[Callable[..., Any]], *args: Any) -> None:
    for caller in callers:
        caller(*args)


def overridden(model: TrainingModule, name: str) -> Callable[..., Any] | None:
    """``model``'s own override of a TrainingModule method, bound, or ``None`` when it keeps the default."""
    return module_override(model, name)


def refuse_uncalled_overrides(trainer: TrainerView, model: TrainingModule) -> None:
    """A hook prec would not call is an error now, not an override that silently never runs."""
    problems = [
        f"{type(callback).__name__}.{name}"
        for callback in trainer.callbacks
        for name in uncalled_overrides(callback, CALLED_CALLBACK_HOOKS)
    ]
    problems += [
        f"{type(model).__name__}.{name} ({reason})"
        for name, reason in UNCALLED_MODULE_HOOKS.items()
        if callable(getattr(type(model), name, None))
    ]
    if problems:
        raise ConfigurationError(
            f"these hooks are overridden but prec does not call them: {'; '.join(problems)}. See docs/porting.md."
        )


def batch_transfer(trainer: TrainerView, model: TrainingModule, dataloader_idx: int = 0) -> Callable[[Any], Any] | None:
    """The function that moves a batch to the device, through the module's transfer hooks where it overrides
    them (``on_before_batch_transfer`` → ``transfer_batch_to_device`` → ``on_after_batch_transfer``); ``None``
    when a batch needs no move and no hook (CPU, no override)."""
    strategy = trainer.strategy
    before = overridden(model, "on_before_batch_transfer")
    transfer = overridden(model, "transfer_batch_to_device")
    after = overridden(model, "on_after_batch_transfer")
    move: Callable[[Any], Any] | None = None
    if transfer is not None:
        device = strategy.root_device
        move = partial(_call_transfer, transfer, device, dataloader_idx)
    elif strategy.root_device.type != "cpu":
        move = strategy.batch_to_device
    if before is None and after is None:
        return move
    steps = [
        partial(_hook_with_index, before, dataloader_idx) if before is not None else None,
        move,
        partial(_hook_with_index, after, dataloader_idx) if after is not None else None,
    ]
    chain = [step for step in steps if step is not None]

    def run(batch: Any) -> Any:
        for step in chain:
            batch = step(batch)
        return batch

    return run


def _call_transfer(function: Callable[..., Any], device: Any, dataloader_idx: int, batch: Any) -> Any:
    return function(batch, device, dataloader_idx)


def _hook_with_index(function: Callable[..., Any], dataloader_idx: int, batch: Any) -> Any:
    return function(batch, dataloader_idx)


def limit_batches(limit: int | float | None, loader: Iterable[Any]) -> float:
    """How many batches an epoch takes from ``loader`` (``inf`` when unlimited and unsized)."""
    size = len(loader) if hasattr(loader, "__len__") else math.inf  # type: ignore[arg-type]
    if limit is None:
        return size
    if isinstance(limit, float):
        if size == math.inf:
            if limit == 1.0:
                return size
            raise ConfigurationError("a fractional batch limit needs a dataloader with a length.")
        return int(size * limit)
    return min(size, limit)
