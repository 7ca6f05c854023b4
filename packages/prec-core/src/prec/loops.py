"""The loop behind ``fit``: epochs, validation and the sanity check around :class:`~prec.training_epoch.TrainingEpoch`
(the evaluation loops are in :mod:`prec.evaluation`, set-up and tear-down in :mod:`prec.run_setup`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from prec.checkpoint import load_checkpoint
from prec.errors import ConfigurationError
from prec.evaluation import evaluate, sanity_check
from prec.hooks import call, hook_callers, limit_batches
from prec.loggers import log_results, record_precision_metrics
from prec.module import TrainingModule
from prec.optim import parse_optimizers, step_schedulers
from prec.run_setup import announce, setup_model, teardown_run
from prec.summary import summarize
from prec.training_epoch import FIT_HOOKS, TrainingEpoch

if TYPE_CHECKING:
    from prec.trainer import Trainer

__all__ = ["run_fit", "setup_model", "teardown_run"]


def run_fit(
    trainer: Trainer, model: TrainingModule, train_loader: Iterable[Any], val_loader: Iterable[Any] | None
) -> None:
    state = trainer.state
    optimizers, schedulers = parse_optimizers(model.configure_optimizers())
    if not model.automatic_optimization:
        for name, value, fix in (
            ("gradient_clip_val", trainer.gradient_clip_val, "call self.clip_gradients(opt, gradient_clip_val=...)"),
            ("accumulate_grad_batches", trainer.accumulate_grad_batches > 1, "step the optimizer every N batches"),
        ):
            if value:
                raise ConfigurationError(
                    f"Trainer({name}=...) does not apply to manual optimization ({type(model).__name__}"
                    f".automatic_optimization is False): {fix} in training_step instead."
                )
    for optimizer in optimizers:
        trainer.precision_plugin.setup_optimizer(optimizer)
    state.optimizers = [trainer.strategy.setup_optimizer(optimizer) for optimizer in optimizers]
    state.lr_scheduler_configs = schedulers
    train_loader = trainer.strategy.setup_dataloader(train_loader)
    if val_loader is not None:
        val_loader = trainer.strategy.setup_dataloader(val_loader)
    state.train_batches = limit_batches(trainer.limit_train_batches, train_loader)
    trainer.num_training_batches = state.train_batches
    if state.ckpt_path is not None:
        load_checkpoint(trainer, model, state.ckpt_path, "fit")

    hooks = {name: hook_callers(trainer, model, name) for name in FIT_HOOKS}
    announce(trainer)
    if trainer.enable_model_summary and trainer.is_global_zero:
        _show_summary(trainer, model)
    call(hooks["on_fit_start"])
    validate = None
    if val_loader is not None:
        validate = partial(evaluate, trainer, model, val_loader, "validate", torch.no_grad)
        if trainer.num_sanity_val_steps:
            sanity_check(trainer, model, val_loader)
    call(hooks["on_train_start"])
    loop = TrainingEpoch(trainer, model, hooks)
    metrics = state.metrics
    while not _done(trainer):
        model.train()
        metrics.training = True
        call(hooks["on_train_epoch_start"])
        loop.run(train_loader, validate)
        if loop.stopped_early:  # max_steps reached mid-epoch: no validation, no epoch hooks
            break
        if validate is not None and (state.current_epoch + 1) % trainer.check_val_every_n_epoch == 0:
            validate()
            model.train()
        metrics.training = True
        results = metrics.end_epoch()  # on_train_epoch_end sees the epoch means
        call(hooks["on_train_epoch_end"])
        results.update(metrics.end_epoch())  # and what that hook logged itself
        if loop.precision_metrics:
            record_precision_metrics(trainer)
        log_results(trainer, results)
        if loop.logger is not None:
            loop.logger.flush()
        if not loop.manual:  # manual optimization steps its schedulers itself, as in Lightning
            # Schedulers that monitor a metric step after validation; the others stepped with the last batch.
            step_schedulers(trainer, "epoch", monitored=True if loop.epoch_schedulers_stepped else None)
        state.current_epoch += 1
        state.batches_seen = 0
        call(hooks["on_train_epoch_completed"])
    call(hooks["on_train_end"])
    call(hooks["on_fit_end"])


def _show_summary(trainer: Trainer, model: TrainingModule) -> None:
    """The precision-aware memory summary at fit start: on stderr next to the progress bar in an interactive run,
    on the ``prec`` logger (INFO) otherwise, so a script's own stdout stays its own."""
    optimizers = trainer.state.optimizers
    text = str(summarize(model, trainer.precision_plugin, optimizers[0] if optimizers else None))
    if trainer.enable_progress_bar:
        print(text, file=sys.stderr)
    else:
        logging.getLogger("prec").info("%s", text)


def may_stop(trainer: Trainer) -> bool:
    """``should_stop`` holds once ``min_epochs``/``min_steps`` are met (until then training goes on, said once)."""
    state = trainer.state
    if not state.should_stop:
        return False
    short = (trainer.min_epochs is not None and state.current_epoch < trainer.min_epochs) or (
        trainer.min_steps is not None and state.global_step < trainer.min_steps
    )
    if short and not state.min_notice_given:
        state.min_notice_given = True
        logging.getLogger("prec").info(
            "training was asked to stop, but min_epochs=%s / min_steps=%s are not met yet: it goes on.",
            trainer.min_epochs,
            trainer.min_steps,
        )
    return not short


def _done(trainer: Trainer) -> bool:
    state = trainer.state
    if may_stop(trainer):
        return True
    if trainer.max_steps != -1 and state.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs is not None and state.current_epoch >= trainer.max_epochs
