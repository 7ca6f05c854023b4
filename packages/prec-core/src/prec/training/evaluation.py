"""The loops behind ``validate``, ``test`` and ``predict``, validation within ``fit`` and the sanity check."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from prec.errors import ConfigurationError
from prec.model.datamodule import SeveralLoaders
from prec.model.steps import step_caller
from prec.training.checkpointing import capture_rng, restore_rng
from prec.training.hook_calls import batch_transfer, call, hook_callers, limit_batches, module_override
from prec.training.logging import log_results

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView


#: Lightning's suffix of a metric logged while one of several loaders runs (``test_loss/dataloader_idx_1``).
LOADER_SUFFIX = "/dataloader_idx_"


def run_evaluation(trainer: TrainerView, model: TrainingModule, loader: Any, stage: str) -> list[dict[str, float]]:
    """``validate()``/``test()``: the epoch metrics, one dict per loader (Lightning's return value; the progress
    bar callback prints them as a table)."""
    trainer.state.metrics.reset()
    prefix = "validation" if stage == "validate" else "test"
    start, end = hook_callers(trainer, model, f"on_{prefix}_start"), hook_callers(trainer, model, f"on_{prefix}_end")
    loaders = [trainer.strategy.setup_dataloader(item) for item in each_loader(loader)]
    call(start)
    results = evaluate(trainer, model, loaders, stage, torch.inference_mode)
    call(end)
    return results_per_loader(results, len(loaders))


def each_loader(loader: Any) -> tuple[Any, ...]:
    """The loaders of a stage in ``dataloader_idx`` order: several, or the one."""
    return loader.loaders if isinstance(loader, SeveralLoaders) else (loader,)


def results_per_loader(results: dict[str, float], count: int) -> list[dict[str, float]]:
    """Lightning's return value: loader ``i``'s dict holds the names ending in ``/dataloader_idx_i`` and those
    logged outside any loader's batches (in ``on_test_epoch_end``)."""
    if count == 1:
        return [results]
    split: list[dict[str, float]] = [{} for _ in range(count)]
    for name, value in results.items():
        _, suffix, index = name.rpartition(LOADER_SUFFIX)
        if suffix and index.isdigit() and int(index) < count:
            split[int(index)][name] = value
        else:
            for entry in split:
                entry[name] = value
    return split


def indexed_step(function: Callable[..., Any], name: str, model: TrainingModule, count: int) -> Callable[..., Any]:
    """``function(batch, batch_idx, dataloader_idx)`` for a stage with several loaders; a step that takes no
    ``dataloader_idx`` is refused, as Lightning refuses it, since it could not tell the loaders apart."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return function
    index = parameters.get("dataloader_idx")
    if index is not None and index.kind is index.KEYWORD_ONLY:
        return lambda batch, batch_idx, dataloader_idx: function(batch, batch_idx, dataloader_idx=dataloader_idx)
    positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters.values()):
        return function
    raise ConfigurationError(
        f"{type(model).__name__}.{name} takes no dataloader_idx, but the stage has {count} loaders: add a"
        f" `dataloader_idx: int = 0` argument ({name}(self, batch, batch_idx, dataloader_idx=0)), as Lightning"
        " requires."
    )


def evaluate(
    trainer: TrainerView,
    model: TrainingModule,
    loaders: Sequence[Iterable[Any]],
    stage: str,
    grad_mode: Callable[[], Any],
    *,
    limit: float | None = None,
) -> dict[str, float]:
    """Run ``*_step`` over each of ``loaders`` under ``grad_mode`` and the precision's forward context; within
    ``fit`` the training epoch's logged values are set aside so validation means only its own. Within ``fit`` this
    is also where ``on_validation_start``/``end`` run (``validate()`` runs them around it). With several loaders
    the steps and batch hooks get ``dataloader_idx`` and logged names Lightning's ``/dataloader_idx_N``."""
    prefix = "validation" if stage == "validate" else "test"
    state = trainer.state
    in_fit = state.stage == "fit"
    epoch_start = hook_callers(trainer, model, f"on_{prefix}_epoch_start")
    epoch_end = hook_callers(trainer, model, f"on_{prefix}_epoch_end")
    batch_start = hook_callers(trainer, model, f"on_{prefix}_batch_start")
    batch_end = hook_callers(trainer, model, f"on_{prefix}_batch_end")
    start = hook_callers(trainer, model, "on_validation_start") if in_fit else []
    end = hook_callers(trainer, model, "on_validation_end") if in_fit else []
    function = trainer.strategy.step_function(state.wrapped_model, model, f"{prefix}_step")
    several = len(loaders) > 1
    step = indexed_step(function, f"{prefix}_step", model, len(loaders)) if several else step_caller(function)
    precision = trainer.precision_plugin
    metrics = state.metrics
    was_training = metrics.training
    metrics.training = False
    saved = metrics.begin_evaluation()
    stage_limit = trainer.limit_val_batches if stage == "validate" else trainer.limit_test_batches
    limits = [limit if limit is not None else limit_batches(stage_limit, loader) for loader in loaders]
    if stage == "validate":
        trainer.num_val_batches = sum(limits)
    else:
        trainer.num_test_batches = sum(limits)
    modes = module_modes(model)
    model.eval()
    try:
        call(start)
        call(epoch_start)
        with grad_mode():
            for dataloader_idx, (loader, loader_limit) in enumerate(zip(loaders, limits, strict=True)):
                to_device = batch_transfer(trainer, model, dataloader_idx)
                index = (dataloader_idx,) if several else ()  # one loader: Lightning passes no dataloader_idx
                metrics.loader_suffix = f"{LOADER_SUFFIX}{dataloader_idx}" if several else ""
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= loader_limit:
                        break
                    if to_device is not None:
                        batch = to_device(batch)
                    batch = precision.convert_input(batch)
                    metrics.current_batch = batch
                    if batch_start:
                        call(batch_start, batch, batch_idx, *index)
                    with precision.forward_context():
                        output = step(batch, batch_idx, *index)
                    if batch_end:
                        call(batch_end, output, batch, batch_idx, *index)
            metrics.loader_suffix = ""
        call(epoch_end)
        results = metrics.end_epoch()
        if not state.sanity_checking:
            log_results(trainer, results)
        call(end)
    finally:
        metrics.loader_suffix = ""
        restore_module_modes(model, modes)
        metrics.training = was_training
        metrics.end_evaluation(saved)
    return {name: float(value) for name, value in results.items()}


def sanity_check(trainer: TrainerView, model: TrainingModule, loader: Iterable[Any]) -> None:
    """A few validation batches before training (``num_sanity_val_steps``; ``-1``: all), so a broken
    ``validation_step`` fails in seconds. Nothing it logs is kept or written."""
    state = trainer.state
    count = trainer.num_sanity_val_steps
    limit = limit_batches(trainer.limit_val_batches, loader)
    limit = limit if count == -1 else min(limit, count)
    rng = capture_rng()  # as Lightning: the check draws no number the training run would have drawn
    call(hook_callers(trainer, model, "on_sanity_check_start"))
    state.sanity_checking = True
    try:
        evaluate(trainer, model, [loader], "validate", torch.no_grad, limit=limit)
    finally:
        state.sanity_checking = False
        state.metrics.reset()
        restore_rng(rng)
    call(hook_callers(trainer, model, "on_sanity_check_end"))


def run_predict(trainer: TrainerView, model: TrainingModule, loader: Any) -> list[Any]:
    """``predict()``: the outputs, one list per loader when there are several (Lightning's return value)."""
    state = trainer.state
    loaders = [trainer.strategy.setup_dataloader(item) for item in each_loader(loader)]
    several = len(loaders) > 1
    function = trainer.strategy.step_function(state.wrapped_model, model, "predict_step")
    if several and module_override(model, "predict_step") is not None:
        step = indexed_step(function, "predict_step", model, len(loaders))
    else:  # TrainingModule's own predict_step needs no index
        plain = step_caller(function)
        step = lambda batch, batch_idx, *index: plain(batch, batch_idx)  # noqa: E731
    hooks = {
        name: hook_callers(trainer, model, f"on_predict_{name}")
        for name in ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")
    }
    precision = trainer.precision_plugin
    limits = [limit_batches(trainer.limit_predict_batches, item) for item in loaders]
    trainer.num_predict_batches = sum(limits)
    outputs: list[list[Any]] = [[] for _ in loaders]
    modes = module_modes(model)
    model.eval()
    call(hooks["start"])
    call(hooks["epoch_start"])
    with torch.inference_mode():
        for dataloader_idx, (item, limit) in enumerate(zip(loaders, limits, strict=True)):
            to_device = batch_transfer(trainer, model, dataloader_idx) or trainer.strategy.batch_to_device
            index = (dataloader_idx,) if several else ()
            for batch_idx, batch in enumerate(item):
                if batch_idx >= limit:
                    break
                batch = precision.convert_input(to_device(batch))
                if hooks["batch_start"]:
                    call(hooks["batch_start"], batch, batch_idx, *index)
                with precision.forward_context():
                    output = precision.convert_output(step(batch, batch_idx, *index))
                outputs[dataloader_idx].append(output)
                if hooks["batch_end"]:
                    call(hooks["batch_end"], output, batch, batch_idx, *index)
    call(hooks["epoch_end"])
    call(hooks["end"])
    restore_module_modes(model, modes)
    return outputs if several else outputs[0]


def module_modes(model: torch.nn.Module) -> dict[str, bool]:
    """Each submodule's ``training`` flag, so evaluation gives a frozen backbone back in ``eval()`` (Lightning's
    ``_ModuleMode``) instead of putting every submodule in train mode."""
    return {name: module.training for name, module in model.named_modules()}


def restore_module_modes(model: torch.nn.Module, modes: dict[str, bool]) -> None:
    for name, module in model.named_modules():
        if name in modes:
            module.training = modes[name]
