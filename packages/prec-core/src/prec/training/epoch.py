"""One training epoch: the hot path.

Hooks nobody overrode are never called, precision and strategy methods are bound once per epoch, and nothing
touches ``nn.Module.__setattr__`` or syncs with the device per step.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.steps import step_caller
from prec.training.checkpointing import capture_rng, restore_rng
from prec.training.hook_calls import batch_transfer, call, overridden
from prec.training.logging import flush_logs
from prec.training.optim import StepOptimizer, step_schedulers

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

FIT_HOOKS = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_epoch_completed",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def extract_loss(output: Any) -> Tensor | None:
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise ConfigurationError("training_step returned a dict without a 'loss' key.")
        return output["loss"]
    raise ConfigurationError(f"training_step must return a tensor, a dict with 'loss', or None; got {type(output)}.")


class TrainingEpoch:
    """One pass over the training data with automatic or manual optimization.

    Everything optional (clipping, accumulation, in-epoch validation, metric rows, overridden Lightning hooks) is
    decided once here, so the per-batch cost of a feature nobody enabled is a falsy check.
    """

    def __init__(self, trainer: TrainerView, model: TrainingModule, hooks: dict[str, list[Callable[..., Any]]]) -> None:
        self.trainer = trainer
        self.model = model
        self.hooks = hooks
        self.stopped_early = False
        self.epoch_schedulers_stepped = False
        self.warned_none = False
        strategy = trainer.strategy
        self.step = step_caller(strategy.step_function(trainer.state.wrapped_model, model, "training_step"))
        self.to_device = batch_transfer(trainer, model)
        self.manual = not model.automatic_optimization
        self.clip_val = trainer.gradient_clip_val
        self.clip_algorithm = trainer.gradient_clip_algorithm or "norm"
        self.clip_hook = overridden(model, "configure_gradient_clipping")
        self.step_hook = overridden(model, "optimizer_step")
        self.zero_grad_hook = overridden(model, "optimizer_zero_grad")
        self.batch_start_hook = overridden(model, "on_train_batch_start")
        # Reading the loss scale syncs with the device: only at flushes and epoch ends.
        precision = trainer.precision_plugin
        self.precision_metrics = precision.guard.active or bool(precision.metrics())
        self.logger = trainer.log_sink if strategy.is_global_zero else None

    def start_epoch(self, loader: Iterable[Any]) -> tuple[Iterator[Any], int]:
        """The epoch's batch iterator and the index of its first batch (after a mid-epoch resume: the batches
        the checkpoint had seen are fetched again from the same RNG state and dropped)."""
        state = self.trainer.state
        self.trainer.strategy.on_train_epoch_start(state.current_epoch)  # a distributed sampler's epoch order
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
        to_device, step, manual = self.to_device, self.step, self.manual
        batch_start, batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
        before_backward, after_backward = hooks["on_before_backward"], hooks["on_after_backward"]
        has_step_schedulers = not manual and any(c.interval == "step" for c in trainer.lr_scheduler_configs)
        has_epoch_schedulers = not manual and any(
            c.interval == "epoch" and c.monitor is None for c in trainer.lr_scheduler_configs
        )
        accumulate = trainer.accumulate_grad_batches
        no_gradient_sync, wrapped = trainer.strategy.no_gradient_sync, state.wrapped_model
        total = state.train_batches if state.train_batches is not None else math.inf
        val_every = _val_interval(trainer.val_check_interval, total) if validate is not None else 0
        logger = self.logger
        append_row = logger.rows.append if logger is not None else None
        flush_every = logger.flush_every_n_steps if logger is not None else 0
        log_every = trainer.log_every_n_steps
        epoch, max_steps = state.current_epoch, trainer.max_steps
        iterator, first = self.start_epoch(loader)
        self.stopped_early = False
        self.epoch_schedulers_stepped = False
        pending_grads = False  # a backward ran since the last optimizer step
        for batch_idx, batch in enumerate(iterator, first):
            if batch_idx >= total:
                break
            if to_device is not None:
                batch = to_device(batch)
            if convert_input is not None:
                batch = convert_input(batch)
            if batch_start and self.start_batch(batch, batch_idx) == -1:
                break  # Lightning's rule: on_train_batch_start returning -1 ends the epoch
            metrics.current_batch = batch  # what a logged epoch mean is weighted by, unless batch_size= is given
            last = batch_idx + 1 >= total
            boundary = accumulate == 1 or (batch_idx + 1) % accumulate == 0 or last
            local = not boundary and not manual  # an accumulating micro-batch: gradients stay on this process
            if local:
                no_sync = no_gradient_sync(wrapped)
                no_sync.__enter__()
            if forward_context is None:
                output = step(batch, batch_idx)
            else:
                with forward_context():
                    output = step(batch, batch_idx)
            if manual:  # global_step counts the user's opt.step() calls (ManualOptimizer), as in Lightning
                precision.update_scaler()  # once per training_step, after the user's opt.step() calls
                stepped = bool(state.manual_stepped)
                state.manual_stepped.clear()
            else:
                stepped = False
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
                if local:
                    no_sync.__exit__(None, None, None)
                if boundary and pending_grads:
                    if plain_step is None:
                        self.optimizer_step(batch_idx, loss)
                    else:
                        plain_step()
                        zero_grad(set_to_none=True)
                    pending_grads = False
                    stepped = True
            state.batches_seen = batch_idx + 1
            if append_row is not None and metrics.pending:
                if (state.batches_that_stepped + 1) % log_every == 0:
                    append_row((state.batches_that_stepped, epoch, metrics.take_pending()))
                else:
                    metrics.pending = {}
            if boundary:  # Lightning's logging step: once per window, however many optimizers stepped
                state.batches_that_stepped += 1
            # global_step counts optimizer steps: a window whose training_steps all returned None is no step,
            # and must not consult a stale "skipped" flag for the LR schedulers.
            if boundary and stepped:
                if not manual:
                    state.global_step += 1
                if has_step_schedulers:
                    step_schedulers(trainer, "step")
                if flush_every and state.batches_that_stepped % flush_every == 0:
                    flush_logs(trainer, True)
            if last and has_epoch_schedulers:  # Lightning's order: before the last batch's end hooks
                step_schedulers(trainer, "epoch", monitored=False)
                self.epoch_schedulers_stepped = True
            if batch_end:  # Lightning's outputs: {"loss": detached loss, **extra} under automatic optimization
                call(batch_end, output if manual else batch_outputs(output, loss), batch, batch_idx)
            if val_every and (batch_idx + 1) % val_every == 0 and batch_idx + 1 < total:
                validate()  # type: ignore[misc]
                metrics.training = True
            if max_steps != -1 and state.global_step >= max_steps:
                self.stopped_early = batch_idx + 1 < total
                break
            if state.should_stop:
                if may_stop(trainer):
                    break

    def start_batch(self, batch: Any, batch_idx: int) -> Any:
        """``on_train_batch_start`` of the callbacks, then the module's, whose ``-1`` ends the epoch."""
        response = None
        for caller in self.hooks["on_train_batch_start"]:
            result = caller(batch, batch_idx)
            if caller == self.batch_start_hook:
                response = result
        return response

    def plain_optimizer_step(self) -> Callable[..., Any] | None:
        """What to call inline when nothing sits between backward and step (one optimizer, no hooks, no clipping,
        no grad scaler): the precision's bound ``optimizer_step`` (the non-finite guard lives there)."""
        trainer, precision = self.trainer, self.trainer.precision_plugin
        if (
            len(trainer.optimizers) != 1
            or precision.scaler is not None
            or self.clip_val is not None
            or self.hooks["on_before_optimizer_step"]
            or self.hooks["on_before_zero_grad"]
            or self.clip_hook is not None
            or self.step_hook is not None
            or self.zero_grad_hook is not None
        ):
            return None
        return precision.bind_optimizer_step(trainer.optimizers[0])

    def optimizer_step(self, batch_idx: int, loss: Tensor | None) -> None:
        """Lightning's order per optimizer: ``on_before_optimizer_step`` (true gradients), clipping
        (``configure_gradient_clipping``), ``optimizer_step``, ``on_before_zero_grad``, ``optimizer_zero_grad``."""
        trainer = self.trainer
        precision = trainer.precision_plugin
        before_step, before_zero = self.hooks["on_before_optimizer_step"], self.hooks["on_before_zero_grad"]
        clip_val, epoch = self.clip_val, trainer.state.current_epoch
        optimizers = trainer.optimizers
        update = len(optimizers) == 1
        for optimizer in optimizers:
            if before_step:
                precision.unscale_gradients(optimizer)  # hooks see true gradients, not scaled ones
                call(before_step, optimizer)
            if self.clip_hook is not None:
                precision.unscale_gradients(optimizer)
                self.clip_hook(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
            elif clip_val is not None:
                precision.clip_gradients(optimizer, clip_val, self.clip_algorithm)  # unscales first
            if self.step_hook is not None:
                wrapped = StepOptimizer(optimizer, precision, update)
                self.step_hook(epoch, batch_idx, wrapped, lambda: loss)
            else:
                precision.optimizer_step(optimizer, update=update)
            if before_zero:
                call(before_zero, optimizer)
            if self.zero_grad_hook is not None:
                self.zero_grad_hook(epoch, batch_idx, optimizer)
            else:
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


def batch_outputs(output: Any, loss: Tensor | None) -> dict[str, Any]:
    """What ``on_train_batch_end`` receives under automatic optimization, as in Lightning: ``{"loss": loss}`` (the
    accumulation-divided loss, detached) with the other keys ``training_step`` returned; ``{}`` for a skipped
    batch."""
    if loss is None:
        return {}
    extra = {key: value for key, value in output.items() if key != "loss"} if isinstance(output, Mapping) else {}
    return {"loss": loss.detach(), **extra}


def _val_interval(interval: int | float | None, total: float) -> int:
    """Validate every this many training batches within an epoch (0: only at the epoch's end)."""
    if interval is None:
        return 0
    if isinstance(interval, float):
        if total == math.inf:
            raise ConfigurationError("a fractional val_check_interval needs a training dataloader with a length.")
        return max(1, int(total * interval)) if interval < 1.0 else 0
    return interval


def may_stop(trainer: TrainerView) -> bool:
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
