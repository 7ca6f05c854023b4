"""The training loop behind ``fit`` (evaluation loops: :mod:`prec.evaluation`).

The training step is the hot path: hooks nobody overrode are never called, precision and strategy methods are
bound once per run, and nothing touches ``nn.Module.__setattr__`` or syncs with the device per step.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prec._warnings import warn
from prec.callbacks import Callback
from prec.checkpoint import capture_rng, load_checkpoint, restore_rng
from prec.errors import ConfigurationError, PrecWarning
from prec.loggers import flush_logs, log_results, record_precision_metrics
from prec.module import TrainingModule
from prec.optim import ManualOptimizer, parse_optimizers
from prec.optim import step_schedulers as _step_schedulers
from prec.progress import ProgressBar

if TYPE_CHECKING:
    from prec.trainer import Trainer

__all__ = ["ManualOptimizer", "run_fit", "setup_model", "teardown_run"]


# -- set up and tear down ------------------------------------------------------------------------------------
def setup_model(trainer: Trainer, model: TrainingModule, stage: str) -> None:
    """configure_model under the init context, precision conversion, checks, placement, ``setup`` hooks; for
    validate/test/predict, the weights of ``ckpt_path``."""
    if trainer.logger is not None:
        trainer.logger.setup(trainer.default_root_dir, trainer.strategy.is_global_zero)
    precision = trainer.precision_plugin
    precision.setup()
    with trainer.init_module():
        model.configure_model()
    precision.convert_module(model)
    precision.setup_module(model)
    precision.guard.watch(model)
    precision.guard.step_source = lambda: trainer.global_step
    trainer.state.wrapped_model = trainer.strategy.setup_module(model)
    for callback in trainer.callbacks:
        callback.setup(trainer, model, stage)
    model.setup(stage)
    if stage != "fit" and trainer.state.ckpt_path is not None:
        load_checkpoint(trainer, model, trainer.state.ckpt_path, stage)


def teardown_run(trainer: Trainer, model: TrainingModule, stage: str) -> None:
    """Runs once per run, also after an exception: hooks, then the precision's and strategy's teardown."""
    errors: list[BaseException] = []
    for step in (
        *(partial(callback.teardown, trainer, model, stage) for callback in trainer.callbacks),
        partial(model.teardown, stage),
        partial(flush_logs, trainer, stage == "fit"),
        trainer.precision_plugin.teardown,
        trainer.strategy.teardown,
    ):
        try:
            step()
        except Exception as error:  # noqa: BLE001 - finish tearing down, then report
            errors.append(error)
    trainer.state.finish()
    if errors:
        raise errors[0]


def hook_callers(trainer: Trainer, model: TrainingModule, name: str) -> list[Callable[..., Any]]:
    """Bound hook calls for ``name``: overridden callback hooks first, then the module's, if overridden."""
    callers: list[Callable[..., Any]] = [
        partial(getattr(callback, name), trainer, model)
        for callback in trainer.callbacks
        if getattr(type(callback), name) is not getattr(Callback, name)
    ]
    if getattr(type(model), name, None) is not getattr(TrainingModule, name):
        callers.append(getattr(model, name))
    return callers


def call(callers: list[Callable[..., Any]], *args: Any) -> None:
    for caller in callers:
        caller(*args)


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


def extract_loss(output: Any) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise ConfigurationError("training_step returned a dict without a 'loss' key.")
        return output["loss"]
    raise ConfigurationError(f"training_step must return a tensor, a dict with 'loss', or None; got {type(output)}.")


# -- fit ---------------------------------------------------------------------------------------------------
def run_fit(
    trainer: Trainer, model: TrainingModule, train_loader: Iterable[Any], val_loader: Iterable[Any] | None
) -> None:
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
    state = trainer.state
    state.optimizers = [trainer.strategy.setup_optimizer(optimizer) for optimizer in optimizers]
    state.lr_scheduler_configs = schedulers
    train_loader = trainer.strategy.setup_dataloader(train_loader)
    if val_loader is not None:
        val_loader = trainer.strategy.setup_dataloader(val_loader)
    if state.ckpt_path is not None:
        load_checkpoint(trainer, model, state.ckpt_path, "fit")

    hooks = {name: hook_callers(trainer, model, name) for name in _FIT_HOOKS}
    _announce_auto_precision(trainer)
    call(hooks["on_fit_start"])
    call(hooks["on_train_start"])
    loop = _TrainingEpoch(trainer, model, hooks)
    metrics = state.metrics
    validate = None
    if val_loader is not None:
        from prec.evaluation import evaluate

        validate = partial(evaluate, trainer, model, val_loader, "validate", torch.no_grad)
    try:
        while not _done(trainer):
            model.train()
            metrics.training = True
            call(hooks["on_train_epoch_start"])
            loop.run(train_loader, validate)
            if loop.stopped_early:  # max_steps reached mid-epoch: no validation, no epoch hooks
                break
            if validate is not None and (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0:
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
                _step_schedulers(trainer, "epoch")
            state.current_epoch += 1
            state.batches_seen = 0
            call(hooks["on_train_epoch_completed"])
    finally:
        loop.close()
    call(hooks["on_train_end"])
    call(hooks["on_fit_end"])


_FIT_HOOKS = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_epoch_completed",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def _announce_auto_precision(trainer: Trainer) -> None:
    """``precision="auto"`` says what it picked and why, once, at fit start (on rank zero)."""
    if trainer.auto_precision_reason is None or not trainer.is_global_zero:
        return
    message = (
        f"precision='auto' picked {trainer.precision!r} on {trainer.accelerator.name}: {trainer.auto_precision_reason}"
    )
    logging.getLogger("prec").info(message)
    if trainer.enable_progress_bar:
        print(message, file=sys.stderr)


def _done(trainer: Trainer) -> bool:
    if trainer.should_stop:
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs


class _TrainingEpoch:
    """One pass over the training data with automatic or manual optimization.

    Everything optional (clipping, accumulation, in-epoch validation, metric rows) is decided once here, so the
    per-batch cost of a feature nobody enabled is a falsy check.
    """

    def __init__(self, trainer: Trainer, model: TrainingModule, hooks: dict[str, list[Callable[..., Any]]]) -> None:
        self.trainer = trainer
        self.model = model
        self.hooks = hooks
        self.stopped_early = False
        self.warned_none = False
        strategy = trainer.strategy
        self.step = strategy.step_function(trainer.state.wrapped_model, model, "training_step")
        self.to_device = None if strategy.root_device.type == "cpu" else strategy.batch_to_device
        self.manual = not model.automatic_optimization
        self.clip_val = trainer.gradient_clip_val
        self.clip_algorithm = trainer.gradient_clip_algorithm or "norm"
        # Reading the loss scale syncs with the device: only at flushes, refreshes and epoch ends.
        precision = trainer.precision_plugin
        self.precision_metrics = precision.guard.active or bool(precision.metrics())
        self.logger = trainer.logger if strategy.is_global_zero else None
        refresh = partial(record_precision_metrics, trainer) if self.precision_metrics else None
        self.progress = ProgressBar(
            trainer.enable_progress_bar and strategy.is_global_zero, trainer.state.metrics, on_refresh=refresh
        )

    def close(self) -> None:
        self.progress.close()

    def start_epoch(self, loader: Iterable[Any]) -> tuple[Iterator[Any], int]:
        """The epoch's batch iterator and the index of its first batch (after a mid-epoch resume: the batches
        the checkpoint had seen are fetched again from the same RNG state and dropped)."""
        state = self.trainer.state
        resume = state.take_resume_point()
        if resume is None:
            state.epoch_start_rng = capture_rng()
            return iter(loader), 0
        seen, epoch_rng, rng = resume.batches_seen, resume.epoch_start_rng, resume.rng
        if seen:
            if epoch_rng is not None:
                restore_rng(epoch_rng)
            state.epoch_start_rng = epoch_rng
            iterator = iter(loader)
            for _ in itertools.islice(iterator, seen):
                pass
            if rng is not None:
                restore_rng(rng)  # the steps themselves continue from the RNG state at the save
            return iterator, seen
        if rng is not None:
            restore_rng(rng)
        state.epoch_start_rng = capture_rng()
        return iter(loader), 0

    def run(self, loader: Iterable[Any], validate: Callable[[], Any] | None = None) -> None:
        trainer, model, hooks = self.trainer, self.model, self.hooks
        precision = trainer.precision_plugin
        state = trainer.state
        metrics = state.metrics
        # Fast paths chosen once per epoch: what the precision declares as the 32-true no-op is not called per step.
        passthrough = precision.passthrough
        convert_input = None if "convert_input" in passthrough else precision.convert_input
        forward_context = None if "forward_context" in passthrough else precision.forward_context
        backward = None if "backward" in passthrough else precision.backward
        plain_step = self.plain_optimizer_step()
        zero_grad = trainer.optimizers[0].zero_grad if plain_step is not None else None
        advance = self.progress.advance if self.progress.enabled else None
        to_device, step, manual = self.to_device, self.step, self.manual
        batch_start, batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
        before_backward, after_backward = hooks["on_before_backward"], hooks["on_after_backward"]
        has_step_schedulers = not manual and any(c.interval == "step" for c in trainer.lr_scheduler_configs)
        accumulate = trainer.accumulate_grad_batches
        total = limit_batches(trainer.limit_train_batches, loader)
        val_every = _val_interval(trainer.val_check_interval, total) if validate is not None else 0
        logger = self.logger
        append_row = logger.rows.append if logger is not None else None
        flush_every = logger.flush_every_n_steps if logger is not None else 0
        epoch, max_steps = trainer.current_epoch, trainer.max_steps
        iterator, first = self.start_epoch(loader)
        self.progress.start_epoch(epoch, total, first)
        self.stopped_early = False
        pending_grads = False  # a backward ran since the last optimizer step
        for batch_idx, batch in enumerate(iterator, first):
            if batch_idx >= total:
                break
            if to_device is not None:
                batch = to_device(batch)
            if convert_input is not None:
                batch = convert_input(batch)
            if batch_start:
                call(batch_start, batch, batch_idx)
            if forward_context is None:
                output = step(batch, batch_idx)
            else:
                with forward_context():
                    output = step(batch, batch_idx)
            boundary = accumulate == 1 or (batch_idx + 1) % accumulate == 0 or batch_idx + 1 >= total
            stepped = manual  # manual optimization: each training_step is one step of the loop
            if manual:
                precision.update_scaler()  # once per training_step, after the user's opt.step() calls
                state.manual_stepped.clear()
            else:
                loss = output if type(output) is Tensor else extract_loss(output)
                if loss is None:
                    self._warn_none()
                else:
                    if accumulate != 1:
                        loss = loss / accumulate
                    if before_backward:
                        call(before_backward, loss)
                    if backward is None:
                        loss.backward()
                    else:
                        backward(loss, model)
                    if after_backward:
                        call(after_backward)
                    pending_grads = True
                if boundary and pending_grads:
                    if plain_step is None:
                        self.optimizer_step()
                    else:
                        plain_step()
                        zero_grad(set_to_none=True)
                    pending_grads = False
                    stepped = True
            state.batches_seen = batch_idx + 1
            if append_row is not None and metrics.pending:
                append_row((state.global_step, epoch, metrics.take_pending()))
            # global_step counts optimizer steps: a window whose training_steps all returned None is no step,
            # and must not consult a stale "skipped" flag for the LR schedulers.
            if boundary and stepped:
                state.global_step += 1
                if has_step_schedulers:
                    _step_schedulers(trainer, "step")
                if flush_every and state.global_step % flush_every == 0:
                    flush_logs(trainer, True)
            if batch_end:
                call(batch_end, output, batch, batch_idx)
            if advance is not None:
                advance()
            if val_every and (batch_idx + 1) % val_every == 0 and batch_idx + 1 < total:
                validate()  # type: ignore[misc]
                model.train()
                metrics.training = True
            if max_steps != -1 and state.global_step >= max_steps:
                self.stopped_early = batch_idx + 1 < total
                break
            if state.should_stop:
                break

    def plain_optimizer_step(self) -> Callable[..., Any] | None:
        """What to call inline when nothing sits between backward and step (one optimizer, no hooks, no clipping,
        no grad scaler): the precision's ``optimizer_step`` for that optimizer (the non-finite guard lives there)."""
        trainer, precision = self.trainer, self.trainer.precision_plugin
        if (
            len(trainer.optimizers) != 1
            or precision.scaler is not None
            or self.clip_val is not None
            or self.hooks["on_before_optimizer_step"]
            or self.hooks["on_before_zero_grad"]
        ):
            return None
        return precision.bind_optimizer_step(trainer.optimizers[0])

    def optimizer_step(self) -> None:
        trainer = self.trainer
        precision = trainer.precision_plugin
        before_step, before_zero = self.hooks["on_before_optimizer_step"], self.hooks["on_before_zero_grad"]
        clip_val = self.clip_val
        optimizers = trainer.optimizers
        update = len(optimizers) == 1
        for optimizer in optimizers:
            if before_step:
                precision.unscale_gradients(optimizer)  # hooks see true gradients, not scaled ones
                call(before_step, optimizer)
            if clip_val is not None:
                precision.clip_gradients(optimizer, clip_val, self.clip_algorithm)  # unscales first
            precision.optimizer_step(optimizer, update=update)
            if before_zero:
                call(before_zero, optimizer)
            optimizer.zero_grad(set_to_none=True)
        if not update:
            precision.update_scaler()

    def _warn_none(self) -> None:
        if not self.warned_none:
            self.warned_none = True
            warn(
                "training_step returned None: backward and the optimizer step are skipped for that batch"
                " (warned once per fit).",
                PrecWarning,
            )


def _val_interval(interval: int | float | None, total: float) -> int:
    """Validate every this many training batches within an epoch (0: only at the epoch's end)."""
    if interval is None:
        return 0
    if isinstance(interval, float):
        if total == math.inf:
            raise ConfigurationError("a fractional val_check_interval needs a training dataloader with a length.")
        return max(1, int(total * interval)) if interval < 1.0 else 0
    return interval
