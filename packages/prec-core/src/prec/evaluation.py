"""The loops behind ``validate``, ``test`` and ``predict`` (and validation within ``fit``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from prec.loggers import log_results
from prec.loops import call, hook_callers, limit_batches

if TYPE_CHECKING:
    from prec.module import TrainingModule
    from prec.trainer import Trainer


def run_evaluation(trainer: Trainer, model: TrainingModule, loader: Iterable[Any], stage: str) -> dict[str, float]:
    trainer.state.metrics.reset()
    return evaluate(trainer, model, trainer.strategy.setup_dataloader(loader), stage, torch.inference_mode)


def evaluate(
    trainer: Trainer, model: TrainingModule, loader: Iterable[Any], stage: str, grad_mode: Callable[[], Any]
) -> dict[str, float]:
    """Run ``*_step`` over ``loader`` under ``grad_mode`` and the precision's forward context; within ``fit`` the
    training epoch's logged values are set aside so validation means only its own."""
    prefix = "validation" if stage == "validate" else "test"
    epoch_start = hook_callers(trainer, model, f"on_{prefix}_epoch_start")
    epoch_end = hook_callers(trainer, model, f"on_{prefix}_epoch_end")
    start = hook_callers(trainer, model, "on_validation_start") if stage == "validate" else []
    end = hook_callers(trainer, model, "on_validation_end") if stage == "validate" else []
    step = trainer.strategy.step_function(trainer.state.wrapped_model, model, f"{prefix}_step")
    precision = trainer.precision_plugin
    metrics = trainer.state.metrics
    was_training = metrics.training
    metrics.training = False
    saved = metrics.begin_evaluation()
    limit = limit_batches(trainer.limit_val_batches if stage == "validate" else None, loader)
    model.eval()
    try:
        call(start)
        call(epoch_start)
        with grad_mode():
            for batch_idx, batch in enumerate(loader):
                if batch_idx >= limit:
                    break
                batch = precision.convert_input(trainer.strategy.batch_to_device(batch))
                with precision.forward_context():
                    step(batch, batch_idx)
        call(epoch_end)
        results = metrics.end_epoch()
        log_results(trainer, results)
        call(end)
    finally:
        metrics.training = was_training
        metrics.end_evaluation(saved)
    return {name: float(value) for name, value in results.items()}


def run_predict(trainer: Trainer, model: TrainingModule, loader: Iterable[Any]) -> list[Any]:
    step = trainer.strategy.step_function(trainer.state.wrapped_model, model, "predict_step")
    precision = trainer.precision_plugin
    outputs: list[Any] = []
    model.eval()
    with torch.inference_mode():
        for batch_idx, batch in enumerate(trainer.strategy.setup_dataloader(loader)):
            batch = precision.convert_input(trainer.strategy.batch_to_device(batch))
            with precision.forward_context():
                outputs.append(precision.convert_output(step(batch, batch_idx)))
    return outputs
