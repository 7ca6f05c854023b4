"""The loops behind ``validate``, ``test`` and ``predict``, validation within ``fit`` and the sanity check."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from prec.model.steps import step_caller
from prec.training.checkpointing import capture_rng, restore_rng
from prec.training.hook_calls import batch_transfer, call, hook_callers, limit_batches
from prec.training.logging import log_results

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView


def run_evaluation(
    trainer: TrainerView, model: TrainingModule, loader: Iterable[Any], stage: str
) -> list[dict[str, float]]:
    """``validate()``/``test()``: the epoch metrics, one dict per loader (Lightning's return value; the progress
    bar callback prints them as a table)."""
    trainer.state.metrics.reset()
    prefix = "validation" if stage == "validate" else "test"
    start, end = hook_callers(trainer, model, f"on_{prefix}_start"), hook_callers(trainer, model, f"on_{prefix}_end")
    call(start)
    results = evaluate(trainer, model, trainer.strategy.setup_dataloader(loader), stage, torch.inference_mode)
    call(end)
    return [results]


def evaluate(
    trainer: TrainerView,
    model: TrainingModule,
    loader: Iterable[Any],
    stage: str,
    grad_mode: Callable[[], Any],
    *,
    limit: float | None = None,
) -> dict[str, float]:
    """Run ``*_step`` over ``loader`` under ``grad_mode`` and the precision's forward context; within ``fit`` the
    training epoch's logged values are set aside so validation means only its own. Within ``fit`` this is also
    where ``on_validation_start``/``end`` run (``validate()`` runs them around it)."""
    prefix = "validation" if stage == "validate" else "test"
    state = trainer.state
    in_fit = state.stage == "fit"
    epoch_start = hook_callers(trainer, model, f"on_{prefix}_epoch_start")
    epoch_end = hook_callers(trainer, model, f"on_{prefix}_epoch_end")
    batch_start = hook_callers(trainer, model, f"on_{prefix}_batch_start")
    batch_end = hook_callers(trainer, model, f"on_{prefix}_batch_end")
    start = hook_callers(trainer, model, "on_validation_start") if in_fit else []
    end = hook_callers(trainer, model, "on_validation_end") if in_fit else []
    step = step_caller(trainer.strategy.step_function(state.wrapped_model, model, f"{prefix}_step"))
    to_device = batch_transfer(trainer, model)
    precision = trainer.precision_plugin
    metrics = state.metrics
    was_training = metrics.training
    metrics.training = False
    saved = metrics.begin_evaluation()
    if limit is None:
        limit = limit_batches(trainer.limit_val_batches if stage == "validate" else trainer.limit_test_batches, loader)
    if stage == "validate":
        trainer.num_val_batches = limit
    else:
        trainer.num_test_batches = limit
    modes = module_modes(model)
    model.eval()
    try:
        call(start)
        call(epoch_start)
        with grad_mode():
            for batch_idx, batch in enumerate(loader):
                if batch_idx >= limit:
                    break
                if to_device is not None:
                    batch = to_device(batch)
                batch = precision.convert_input(batch)
                metrics.current_batch = batch
                if batch_start:
                    call(batch_start, batch, batch_idx)
                with precision.forward_context():
                    output = step(batch, batch_idx)
                if batch_end:
                    call(batch_end, output, batch, batch_idx)
        call(epoch_end)
        results = metrics.end_epoch()
        if not state.sanity_checking:
            log_results(trainer, results)
        call(end)
    finally:
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
        evaluate(trainer, model, loader, "validate", torch.no_grad, limit=limit)
    finally:
        state.sanity_checking = False
        state.metrics.reset()
        restore_rng(rng)
    call(hook_callers(trainer, model, "on_sanity_check_end"))


def run_predict(trainer: TrainerView, model: TrainingModule, loader: Iterable[Any]) -> list[Any]:
    state = trainer.state
    step = step_caller(trainer.strategy.step_function(state.wrapped_model, model, "predict_step"))
    to_device = batch_transfer(trainer, model) or trainer.strategy.batch_to_device
    hooks = {
        name: hook_callers(trainer, model, f"on_predict_{name}")
        for name in ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")
    }
    precision = trainer.precision_plugin
    loader = trainer.strategy.setup_dataloader(loader)
    limit = limit_batches(trainer.limit_predict_batches, loader)
    trainer.num_predict_batches = limit
    outputs: list[Any] = []
    modes = module_modes(model)
    model.eval()
    call(hooks["start"])
    call(hooks["epoch_start"])
    with torch.inference_mode():
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= limit:
                break
            batch = precision.convert_input(to_device(batch))
            if hooks["batch_start"]:
                call(hooks["batch_start"], batch, batch_idx)
            with precision.forward_context():
                output = precision.convert_output(step(batch, batch_idx))
            outputs.append(output)
            if hooks["batch_end"]:
                call(hooks["batch_end"], output, batch, batch_idx)
    call(hooks["epoch_end"])
    call(hooks["end"])
    restore_module_modes(model, modes)
    return outputs


def module_modes(model: torch.nn.Module) -> dict[str, bool]:
    """Each submodule's ``training`` flag, so evaluation gives a frozen backbone back in ``eval()`` (Lightning's
    ``_ModuleMode``) instead of putting every submodule in train mode."""
    return {name: module.training for name, module in model.named_modules()}


def restore_module_modes(model: torch.nn.Module, modes: dict[str, bool]) -> None:
    for name, module in model.named_modules():
        if name in modes:
            module.training = modes[name]
