"""The loop behind ``fit``: epochs, validation and the sanity check around
:class:`~prec.training.epoch.TrainingEpoch` (the evaluation loops are in :mod:`prec.training.evaluation`, set-up and
tear-down in :mod:`prec.training.run_setup`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.module import TrainingModule
from prec.training.checkpointing import load_checkpoint
from prec.training.config import warn_empty_epoch, warn_if_resumed_past_limits
from prec.training.epoch import FIT_HOOKS, TrainingEpoch, may_stop
from prec.training.evaluation import evaluate, sanity_check
from prec.training.fit_data import FitLoaders
from prec.training.hook_calls import call, hook_callers
from prec.training.logging import log_results, record_precision_metrics
from prec.training.optim import parse_optimizers, step_schedulers
from prec.training.run_setup import announce, setup_model, teardown_run
from prec.training.summary import summarize

if TYPE_CHECKING:
    from prec.model.datamodule import StageData
    from prec.model.trainer_view import TrainerView

__all__ = ["run_fit", "setup_model", "teardown_run"]


def run_fit(
    trainer: TrainerView,
    model: TrainingModule,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    data: StageData | None = None,
) -> None:
    """``fit``'s loop over epochs; ``data`` asks for the loaders again (``reload_dataloaders_every_n_epochs``)."""
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
    loaders = FitLoaders(trainer, data, train_loader, val_loader)
    if trainer.log_sink is not None and trainer.is_global_zero and state.train_batches < trainer.log_every_n_steps:
        warn(
            f"the training loader has {state.train_batches} batches, fewer than Trainer(log_every_n_steps="
            f"{trainer.log_every_n_steps}): no step metrics are written in the first epoch. Pass a lower"
            " log_every_n_steps to see them.",
            PrecWarning,
        )
    if state.ckpt_path is not None:
        load_checkpoint(trainer, model, state.ckpt_path, "fit")
        warn_if_resumed_past_limits(
            trainer.max_steps, trainer.max_epochs, state.global_step, state.current_epoch, state.ckpt_path
        )

    hooks = {name: hook_callers(trainer, model, name) for name in FIT_HOOKS}
    state.hooks = hooks
    announce(trainer)
    if trainer.enable_model_summary and trainer.is_global_zero:
        _show_summary(trainer, model)
    _warn_if_modules_in_eval_mode(model)
    call(hooks["on_fit_start"])
    validate: Callable[[], Any] | None = None
    if loaders.val is not None:
        validate = lambda: evaluate(trainer, model, [loaders.val_for_epoch()], "validate", torch.no_grad)  # noqa: E731
        if trainer.num_sanity_val_steps:
            sanity_check(trainer, model, loaders.val)
    call(hooks["on_train_start"])
    loop = TrainingEpoch(trainer, model, hooks)
    metrics = state.metrics
    while not _done(trainer):
        metrics.training = True
        train_loader = loaders.train_for_epoch()  # before on_train_epoch_start, as in Lightning
        call(hooks["on_train_epoch_start"])
        loop.run(train_loader, validate)
        empty_epoch = state.batches_seen == 0
        if loop.stopped_early:  # max_steps reached mid-epoch: no validation, no epoch hooks
            break
        if validate is not None and (state.current_epoch + 1) % trainer.check_val_every_n_epoch == 0:
            validate()  # gives each submodule its own mode back
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
        if empty_epoch and trainer.max_epochs is None:
            warn_empty_epoch(trainer.max_steps)
            break
    call(hooks["on_train_end"])
    call(hooks["on_fit_end"])


def _show_summary(trainer: TrainerView, model: TrainingModule) -> None:
    """The precision-aware memory summary at fit start: on stderr next to the progress bar in an interactive run,
    on the ``prec`` logger (INFO) otherwise, so a script's own stdout stays its own."""
    optimizers = trainer.state.optimizers
    text = str(summarize(model, trainer.precision_plugin, optimizers[0] if optimizers else None))
    if trainer.enable_progress_bar:
        print(text, file=sys.stderr)
    else:
        logging.getLogger("prec").info("%s", text)


def _warn_if_modules_in_eval_mode(model: TrainingModule) -> None:
    """As Lightning: fit leaves each submodule's mode as the user set it (a frozen backbone stays in ``eval()``),
    and says so, since a module left in eval mode by mistake trains without dropout or batch statistics."""
    in_eval = [name or type(model).__name__ for name, module in model.named_modules() if not module.training]
    if in_eval:
        warn(
            f"{len(in_eval)} module(s) are in eval mode at the start of training ({', '.join(in_eval[:5])}"
            f"{' …' if len(in_eval) > 5 else ''}): fit keeps each module's mode as it is. If this is intended"
            " (a frozen part), ignore this warning; otherwise call model.train() before fit().",
            PrecWarning,
        )


def _done(trainer: TrainerView) -> bool:
    state = trainer.state
    if may_stop(trainer):
        return True
    if trainer.max_steps != -1 and state.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs is not None and state.current_epoch >= trainer.max_epochs
