"""TrainingModule: a ``torch.nn.Module`` with the step methods and hooks the Trainer calls."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.model.hparams import HyperparametersMixin

if TYPE_CHECKING:
    from prec.model.trainer_view import TrainerView

StepOutput = Tensor | Mapping[str, Any] | None


class TrainingModule(HyperparametersMixin, torch.nn.Module):
    """Subclass it, implement ``training_step`` and ``configure_optimizers``, and hand it to a Trainer.

    Hooks are no-ops here; the Trainer only calls the ones a subclass overrides, so unused hooks cost nothing.
    """

    #: Set to ``False`` in ``__init__`` to call ``self.manual_backward`` and ``optimizer.step()`` yourself.
    automatic_optimization: bool = True

    # -- set up ---------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build layers here to have them born on the device in the precision's dtype (and sharded, under FSDP).

        Called under the precision's module-init context before ``configure_optimizers``, at the start of every
        ``fit``/``validate``/``test``/``predict``: make it idempotent (return early if the layers exist).
        """

    def configure_optimizers(self) -> Any:
        """Return an optimizer, a list of them, or a dict ``{"optimizer": ..., "lr_scheduler": ...}``."""
        raise ConfigurationError(f"{type(self).__name__} must implement configure_optimizers() to be trained.")

    def setup(self, stage: str) -> None:
        """Called at the start of ``fit``/``validate``/``test``/``predict`` with that stage's name."""

    def teardown(self, stage: str) -> None:
        """Called at the end of every run, also when it raised."""

    # -- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the loss (a tensor or ``{"loss": tensor, ...}``), or ``None`` to skip this batch."""
        raise ConfigurationError(f"{type(self).__name__} must implement training_step(batch, batch_idx).")

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        raise ConfigurationError(f"{type(self).__name__} got validation data but implements no validation_step.")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        raise ConfigurationError(f"{type(self).__name__} got test data but implements no test_step.")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """Defaults to ``self(batch)`` (or ``self(batch[0])`` for ``(inputs, targets)`` batches)."""
        if isinstance(batch, (tuple, list)):
            return self(batch[0])
        return self(batch)

    # -- hooks ----------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_epoch_completed(self) -> None:
        """After the epoch's bookkeeping (epoch schedulers stepped, ``current_epoch`` advanced)."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, outputs: StepOutput, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are already unscaled here (under a grad scaler), so norms you log are the true ones."""

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(
        self, outputs: StepOutput, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: StepOutput, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    # -- data and optimization hooks (Lightning's, called in its order) ---------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch before it moves to the device (called only when overridden)."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a batch to ``device``; override for custom batch types (called only when overridden)."""
        from prec.precision import apply_to_tensors

        return apply_to_tensors(batch, lambda tensor: tensor.to(device, non_blocking=True))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch once it is on the device (called only when overridden)."""
        return batch

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip before each optimizer step (after ``on_before_optimizer_step``, gradients unscaled); the default
        applies the Trainer's ``gradient_clip_val``/``gradient_clip_algorithm``."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any | None = None) -> None:
        """Step ``optimizer`` (a wrapper whose ``step`` goes through the precision: grad scaler and non-finite
        guard). Override for learning-rate warm-up and the like; call ``optimizer.step(closure=optimizer_closure)``.
        The closure returns the loss of the step, which prec has already run forward and backward."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Step one LR scheduler (``metric``: the monitored value for ``ReduceLROnPlateau``-like ones)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to the checkpoint dict before it is written (plain containers and tensors only)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, strict: bool = True, **overrides: Any) -> Any:
        """Build the module from the hyperparameters a checkpoint saved (``save_hyperparameters``), with
        ``overrides``, and load its weights; ``dtype=``/``precision=`` and ``keep_float32=`` pass through to
        :func:`prec.model.hparams.load_from_checkpoint`."""
        from prec.model.hparams import load_from_checkpoint

        return load_from_checkpoint(cls, checkpoint_path, strict=strict, **overrides)

    # -- copies -----------------------------------------------------------------------------------------------
    @override
    def __getstate__(self) -> dict[str, Any]:
        """``copy.deepcopy(model)`` (an EMA or best-so-far copy) and pickling leave the Trainer out, as
        Lightning's do: the copy is a plain module, attached to no run."""
        state = dict(self.__dict__)
        state.pop("_prec_trainer", None)
        return state

    # -- trainer access -------------------------------------------------------------------------------------
    @property
    def trainer(self) -> TrainerView:
        trainer = self.__dict__.get("_prec_trainer")
        if trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer yet.")
        return trainer

    @property
    def current_epoch(self) -> int:
        """The Trainer's current epoch (0 before training)."""
        trainer = self.__dict__.get("_prec_trainer")
        return trainer.current_epoch if trainer is not None else 0

    @property
    def global_step(self) -> int:
        """Optimizer steps taken by the Trainer (0 before training)."""
        trainer = self.__dict__.get("_prec_trainer")
        return trainer.global_step if trainer is not None else 0

    @property
    def logger(self) -> Any:
        """The Trainer's first logger, or ``None``."""
        loggers = self.loggers
        return loggers[0] if loggers else None

    @property
    def loggers(self) -> list[Any]:
        trainer = self.__dict__.get("_prec_trainer")
        return list(trainer.loggers) if trainer is not None else []

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's floating-point parameters (the precision's, once set up)."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        trainer = self.__dict__.get("_prec_trainer")
        return trainer.precision_plugin.param_dtype if trainer is not None else torch.get_default_dtype()

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Make only ``optimizer``'s parameters require gradients (GANs with several optimizers); undo with
        :meth:`untoggle_optimizer`."""
        optimizer = getattr(optimizer, "optimizer", optimizer)
        own = {id(param) for group in optimizer.param_groups for param in group["params"]}
        frozen = {
            id(param): param
            for other in self.trainer.optimizers
            for group in other.param_groups
            for param in group["params"]
            if id(param) not in own
        }
        _refuse_gathered(self, frozen.values())
        saved: dict[int, bool] = {}
        for key, param in frozen.items():
            saved[key] = param.requires_grad
            param.requires_grad = False
        self.__dict__["_prec_toggled"] = saved

    def untoggle_optimizer(self, optimizer: Any) -> None:
        """Restore the ``requires_grad`` flags :meth:`toggle_optimizer` changed."""
        saved = self.__dict__.pop("_prec_toggled", {})
        for other in self.trainer.optimizers:
            for group in other.param_groups:
                for param in group["params"]:
                    if id(param) in saved:
                        param.requires_grad = saved[id(param)]

    @property
    def device(self) -> torch.device:
        trainer = self.__dict__.get("_prec_trainer")
        if trainer is not None:
            return trainer.strategy.root_device
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def log(
        self,
        name: str,
        value: Any,
        *,
        prog_bar: bool = False,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        logger: bool = True,
        sync_dist: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        batch_size: int | None = None,
        **unsupported: Any,
    ) -> None:
        """Record a metric: it appears in ``trainer.callback_metrics``, the metrics file and (``prog_bar``) the
        progress bar. In training steps ``on_step`` defaults to True and ``on_epoch`` to False; in evaluation
        the other way round; with both, the names get ``_step``/``_epoch`` suffixes (as in Lightning).

        The epoch value reduces the epoch's values with ``reduce_fx`` (``"mean"``/``"avg"``, ``"sum"``, ``"max"``,
        ``"min"`` in any case, or ``torch.mean``, ``torch.sum``/``sum``, ``torch.max``/``max``,
        ``torch.min``/``min``); a ``torchmetrics.Metric`` ``value`` is computed and reset at the epoch's end, as in
        Lightning. The mean is weighted by ``batch_size`` (default: inferred from the batch). Under several
        processes epoch values are reduced across ranks at the epoch's end (``sync_dist=False``: kept per rank);
        ``sync_dist=True`` also reduces each step value, a collective per call. Otherwise this costs a
        dictionary write: nothing is synchronised with the device here. Lightning's other arguments are a
        :class:`~prec.ConfigurationError` saying what to do instead (:data:`LOG_ARGUMENTS_LEFT_OUT`)."""
        if unsupported:
            _refuse_log_arguments(name, unsupported)
        self.__dict__["_prec_trainer"].state.metrics.log(
            name, value, prog_bar, on_step, on_epoch, logger, sync_dist, reduce_fx, batch_size
        )

    def log_dict(self, metrics: Mapping[str, Tensor | float | int], **kwargs: Any) -> None:
        """``self.log`` for each entry, with the same keyword arguments."""
        for name, value in metrics.items():
            self.log(name, value, **kwargs)

    def optimizers(self) -> Any:
        """The optimizers from ``configure_optimizers`` (one, or a list), wrapped for manual optimization."""
        optimizers = self.trainer.manual_optimizers()
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def lr_schedulers(self) -> Any:
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision (scaled under a grad scaler), between the ``on_before_backward`` and
        ``on_after_backward`` hooks. Use instead of ``loss.backward()``: under ddp/fsdp the strategy prepares
        gradient synchronisation for it first (see :meth:`no_backward_sync`)."""
        trainer = self.trainer
        hooks = trainer.state.hooks
        loss = trainer.strategy.pre_backward(loss, trainer.state.wrapped_model)
        for hook in hooks.get("on_before_backward", ()):  # Lightning's order, as under automatic optimization
            hook(loss)
        trainer.precision_plugin.backward(loss, trainer.model, *args, **kwargs)
        for hook in hooks.get("on_after_backward", ()):
            hook()

    @contextlib.contextmanager
    def no_backward_sync(self, enabled: bool = True) -> Iterator[None]:
        """Keep the gradients of the ``manual_backward`` calls inside on this process (``enabled=False``: a no-op),
        for accumulating micro-batches by hand: they are synchronised once, by the first backward outside it,
        before ``opt.step()``. Under ddp this is DDP's ``no_sync``, under fsdp ``set_requires_gradient_sync``."""
        if not enabled:
            yield
            return
        trainer = self.trainer
        with trainer.strategy.no_gradient_sync(trainer.state.wrapped_model):
            yield

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> Tensor | None:
        """Clip ``optimizer``'s gradients (unscaled first under a grad scaler); returns the total norm."""
        return self.trainer.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


#: ``self.log`` arguments of Lightning's that prec does not take, with what to do instead.
LOG_ARGUMENTS_LEFT_OUT: Mapping[str, str] = {
    "rank_zero_only": "prec's loggers write from global rank 0 already; to keep a value per rank instead of"
    " reducing it across ranks, pass sync_dist=False.",
    "sync_dist_group": "prec reduces across every process of the run; reduce over a subgroup yourself with"
    " torch.distributed.all_reduce(value, group=...) and log the result.",
    "enable_graph": "prec logs values without their autograd graph; keep the tensor yourself if you need it.",
    "add_dataloader_idx": "prec always adds Lightning's '/dataloader_idx_N' to the names logged while one of"
    " several test loaders runs (add_dataloader_idx=True, Lightning's default); drop the argument.",
    "metric_attribute": "prec logs a torchmetrics.Metric passed as the value by itself (computed and reset at the"
    " epoch's end); drop metric_attribute.",
}


def _refuse_log_arguments(name: str, unsupported: Mapping[str, Any]) -> None:
    argument = next(iter(unsupported))
    reason = LOG_ARGUMENTS_LEFT_OUT.get(argument)
    if reason is None:
        accepted = "prog_bar, on_step, on_epoch, logger, sync_dist, reduce_fx, batch_size"
        raise ConfigurationError(f"self.log({name!r}, ...) got an unknown argument {argument!r}; it takes {accepted}.")
    raise ConfigurationError(f"self.log({name!r}, ..., {argument}=...) is not supported: {reason}")


def _refuse_gathered(module: TrainingModule, params: Iterable[Tensor]) -> None:
    """Sharded (DTensor) parameters the module does not hold now are gathered copies (FSDP's root unit during a
    step): a ``requires_grad`` set on the shard would not reach the copy the module computes with."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    sharded = [param for param in params if isinstance(param, DTensor)]
    holds = {id(param) for param in module.parameters()} if sharded else set()
    if any(id(param) not in holds for param in sharded):
        raise ConfigurationError(
            f"toggle_optimizer() under strategy={module.trainer.strategy.name!r}: the module computes with gathered"
            " copies of the optimizer's sharded parameters, which requires_grad set on the shards does not reach."
            " Detach what another optimizer's loss must not train (e.g. fake.detach()) and zero each optimizer's"
            " gradients before its backward, shard the submodules it trains as their own units (shard_modules),"
            " or use strategy='ddp'."
        )


def unwrap_compiled(stage: str, model: Any) -> TrainingModule:
    """The TrainingModule behind ``model``: ``torch.compile(module)`` is unwrapped, and the module's ``forward``
    compiled with the same settings, so hooks and ``training_step`` stay the module's own and checkpoints carry
    no ``_orig_mod.`` prefix."""
    original = getattr(model, "_orig_mod", None)
    context = getattr(model, "dynamo_ctx", None)
    if isinstance(original, TrainingModule) and isinstance(model, torch.nn.Module) and context is not None:
        if "forward" not in original.__dict__:  # compile once, even when the same wrapper is passed again
            original.forward = context(original.forward)
        return original
    if not isinstance(model, TrainingModule):
        raise ConfigurationError(f"{stage}() takes a prec.TrainingModule, got {type(model).__name__}.")
    return model
