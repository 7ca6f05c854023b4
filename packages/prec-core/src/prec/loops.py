"""The loops behind ``fit``, ``validate``, ``test`` and ``predict``.

The training step is the hot path: hooks nobody overrode are never called, precision and strategy methods are
bound once per run, and nothing touches ``nn.Module.__setattr__`` or syncs with the device per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from prec._warnings import warn
from prec.callbacks import Callback
from prec.errors import ConfigurationError, PrecWarning
from prec.module import TrainingModule
from prec.optim import parse_optimizers
from prec.progress import ProgressBar

if TYPE_CHECKING:
    from prec.trainer import Trainer


# -- set up and tear down ------------------------------------------------------------------------------------
def setup_model(trainer: Trainer, model: TrainingModule, stage: str) -> None:
    """configure_model under the init context, precision conversion, checks, placement, ``setup`` hooks."""
    with trainer.init_module():
        model.configure_model()
    precision = trainer.precision_plugin
    precision.convert_module(model)
    precision.setup_module(model)
    trainer._wrapped_model = trainer.strategy.setup_module(model)
    for callback in trainer.callbacks:
        callback.setup(trainer, model, stage)
    model.setup(stage)


def teardown_run(trainer: Trainer, model: TrainingModule, stage: str) -> None:
    """Runs once per run, also after an exception: hooks, then the precision's and strategy's teardown."""
    errors: list[BaseException] = []
    for step in (
        *(partial(callback.teardown, trainer, model, stage) for callback in trainer.callbacks),
        partial(model.teardown, stage),
        trainer.precision_plugin.teardown,
        trainer.strategy.teardown,
    ):
        try:
            step()
        except Exception as error:  # noqa: BLE001 - finish tearing down, then report
            errors.append(error)
    trainer.state = "finished"
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
    for optimizer in optimizers:
        trainer.precision_plugin.setup_optimizer(optimizer)
    trainer.optimizers = [trainer.strategy.setup_optimizer(optimizer) for optimizer in optimizers]
    trainer.lr_scheduler_configs = schedulers
    train_loader = trainer.strategy.setup_dataloader(train_loader)
    if val_loader is not None:
        val_loader = trainer.strategy.setup_dataloader(val_loader)

    hooks = {name: hook_callers(trainer, model, name) for name in _FIT_HOOKS}
    call(hooks["on_fit_start"])
    call(hooks["on_train_start"])
    loop = _TrainingEpoch(trainer, model, hooks)
    try:
        while not _done(trainer):
            model.train()
            trainer._metrics.training = True
            call(hooks["on_train_epoch_start"])
            loop.run(train_loader)
            if loop.stopped_early:  # max_steps reached mid-epoch: no validation, no epoch hooks
                break
            if val_loader is not None and (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0:
                _evaluate(trainer, model, val_loader, "validate", torch.no_grad)
                model.train()
            trainer._metrics.training = True
            call(hooks["on_train_epoch_end"])
            trainer._metrics.end_epoch()
            _step_schedulers(trainer, "epoch")
            trainer.current_epoch += 1
    finally:
        loop.close()
    call(hooks["on_train_end"])
    call(hooks["on_fit_end"])


_FIT_HOOKS = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def _done(trainer: Trainer) -> bool:
    if trainer.should_stop:
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs


def _step_schedulers(trainer: Trainer, interval: str) -> None:
    precision = trainer.precision_plugin
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval:
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
            config.scheduler.step(metrics[config.monitor])
        else:
            config.scheduler.step()


class _TrainingEpoch:
    """One pass over the training data with automatic or manual optimization."""

    def __init__(self, trainer: Trainer, model: TrainingModule, hooks: dict[str, list[Callable[..., Any]]]) -> None:
        self.trainer = trainer
        self.model = model
        self.hooks = hooks
        self.stopped_early = False
        self.warned_none = False
        strategy = trainer.strategy
        self.step = strategy.step_function(trainer._wrapped_model, model, "training_step")
        self.to_device = None if strategy.root_device.type == "cpu" else strategy.batch_to_device
        self.progress = ProgressBar(trainer.enable_progress_bar and strategy.is_global_zero, trainer._metrics)
        self.manual = not model.automatic_optimization

    def close(self) -> None:
        self.progress.close()

    def run(self, loader: Iterable[Any]) -> None:
        trainer, model, hooks = self.trainer, self.model, self.hooks
        precision = trainer.precision_plugin
        convert_input, forward_context = precision.convert_input, precision.forward_context
        backward = precision.backward
        to_device, step = self.to_device, self.step
        batch_start, batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
        before_backward, after_backward = hooks["on_before_backward"], hooks["on_after_backward"]
        has_step_schedulers = any(config.interval == "step" for config in trainer.lr_scheduler_configs)
        total = limit_batches(trainer.limit_train_batches, loader)
        max_steps = trainer.max_steps
        self.progress.start_epoch(trainer.current_epoch, total)
        self.stopped_early = False
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= total:
                break
            if to_device is not None:
                batch = to_device(batch)
            batch = convert_input(batch)
            if batch_start:
                call(batch_start, batch, batch_idx)
            with forward_context():
                output = step(batch, batch_idx)
            if self.manual:
                precision.update_scaler()
            else:
                loss = extract_loss(output)
                if loss is None:
                    self._warn_none()
                else:
                    if before_backward:
                        call(before_backward, loss)
                    backward(loss, model)
                    if after_backward:
                        call(after_backward)
                    self.optimizer_step()
            trainer.global_step += 1
            if has_step_schedulers:
                _step_schedulers(trainer, "step")
            if batch_end:
                call(batch_end, output, batch, batch_idx)
            self.progress.advance()
            if max_steps != -1 and trainer.global_step >= max_steps:
                self.stopped_early = batch_idx + 1 < total
                break
            if trainer.should_stop:
                break

    def optimizer_step(self) -> None:
        trainer = self.trainer
        precision = trainer.precision_plugin
        before_step, before_zero = self.hooks["on_before_optimizer_step"], self.hooks["on_before_zero_grad"]
        optimizers = trainer.optimizers
        update = len(optimizers) == 1
        for optimizer in optimizers:
            if before_step:
                precision.unscale_gradients(optimizer)  # hooks see true gradients, not scaled ones
                call(before_step, optimizer)
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


# -- evaluation --------------------------------------------------------------------------------------------
def run_evaluation(trainer: Trainer, model: TrainingModule, loader: Iterable[Any], stage: str) -> dict[str, float]:
    trainer._metrics.reset()
    return _evaluate(trainer, model, trainer.strategy.setup_dataloader(loader), stage, torch.inference_mode)


def _evaluate(
    trainer: Trainer, model: TrainingModule, loader: Iterable[Any], stage: str, grad_mode: Callable[[], Any]
) -> dict[str, float]:
    prefix = "validation" if stage == "validate" else "test"
    epoch_start = hook_callers(trainer, model, f"on_{prefix}_epoch_start")
    epoch_end = hook_callers(trainer, model, f"on_{prefix}_epoch_end")
    step = trainer.strategy.step_function(trainer._wrapped_model, model, f"{prefix}_step")
    precision = trainer.precision_plugin
    metrics = trainer._metrics
    was_training = metrics.training
    metrics.training = False
    limit = limit_batches(trainer.limit_val_batches if stage == "validate" else None, loader)
    model.eval()
    try:
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
    finally:
        metrics.training = was_training
    return {name: float(value) for name, value in results.items()}


def run_predict(trainer: Trainer, model: TrainingModule, loader: Iterable[Any]) -> list[Any]:
    step = trainer.strategy.step_function(trainer._wrapped_model, model, "predict_step")
    precision = trainer.precision_plugin
    outputs: list[Any] = []
    model.eval()
    with torch.inference_mode():
        for batch_idx, batch in enumerate(trainer.strategy.setup_dataloader(loader)):
            batch = precision.convert_input(trainer.strategy.batch_to_device(batch))
            with precision.forward_context():
                outputs.append(precision.convert_output(step(batch, batch_idx)))
    return outputs


# -- manual optimization -----------------------------------------------------------------------------------
class ManualOptimizer:
    """Wraps an optimizer for manual optimization: ``step()`` goes through the precision (grad scaler)."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: Trainer) -> None:
        self.optimizer = optimizer
        self._trainer = trainer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        precision = self._trainer.precision_plugin
        return precision.optimizer_step(self.optimizer, closure, update=False, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)
