"""The plugin for Lightning's Trainer: ``lightning.Trainer(plugins=[prec_lightning.Precision("bf16-true", ...)])``.

Lightning drives the step through its plugin: the training step runs inside :meth:`forward_context`, the closure
runs the step and backward, and :meth:`Precision.optimizer_step` steps the optimizer. Each call goes to the prec
precision in the order prec's own Trainer uses, so the same model and data give the same weights under either
Trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision as LightningPrecision
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.precision import NonFinitePolicy, default_dtype
from prec.precision import Precision as PrecPrecision
from prec_lightning._bridge import PrecisionBridge

__all__ = ["Precision"]


class Precision(PrecisionBridge, LightningPrecision):
    """Any precision of prec's registry as a Lightning Trainer precision plugin.

    Args:
        precision: a precision name prec knows (``"bf16-true"``, ``"fp8-mixed"`` from prec-torchao, a third party's),
            or a ``prec.Precision`` instance built already.
        accelerator: the accelerator prec builds the precision for (``"auto"``: the one prec would pick, as
            Lightning's ``accelerator="auto"`` does); it must be the device type Lightning runs on.
        nonfinite: what a step with inf/NaN gradients does (``"skip"``, ``"raise"``, ``"off"`` or a
            ``prec.NonFinitePolicy``), as ``prec.Trainer(nonfinite=...)``.
        log_metrics: log prec's numbers (``loss_scale``, ``skipped_steps``) with ``LightningModule.log`` at
            Lightning's logging cadence (``log_every_n_steps``), so ``trainer.callback_metrics``, the loggers and
            the progress bar have them.
        **options: the precision's options (``master_weights``, ``keep_float32``, ``init_scale`` ...), checked by
            prec: a misspelt or invalid one raises ``prec.ConfigurationError`` here.

    Raises:
        prec.UnknownPrecisionError: ``precision`` is a name no installed plugin registers.
        prec.UnsupportedPrecisionError: no installed plugin provides the precision on ``accelerator``.
    """

    def __init__(
        self,
        precision: str | int | PrecPrecision = "32-true",
        accelerator: str = "auto",
        *,
        nonfinite: NonFinitePolicy | str = "skip",
        log_metrics: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(log_metrics, bool):
            raise ConfigurationError(f"log_metrics={log_metrics!r} must be True or False.")
        self._init_bridge(precision, accelerator, nonfinite, options)
        self.log_metrics = log_metrics
        # prec's backward is a plain one: keep Lightning's (LightningModule.backward, which users may override).
        self._lightning_backward = "backward" in self.prec_precision.passthrough
        self._step_dtype = torch.get_default_dtype()

    @override
    def connect(
        self, model: Module, optimizers: list[Optimizer], lr_schedulers: list[Any]
    ) -> tuple[Module, list[Optimizer], list[Any]]:
        """Check the run and set the optimizers up (``master_weights="fp32"`` gives them float32 copies here,
        before Lightning restores their state from a checkpoint)."""
        for param in model.parameters():
            self.check_device(param.device)
            break
        self._step_dtype = torch.get_default_dtype()  # outside the step's context: the dtype steps run under
        module = _lightning_module(model)
        if module is not None:
            self._refuse_backward_override(module)
            self.prec_precision.guard.step_source = lambda: module.trainer.global_step
        for optimizer in optimizers:
            self.prec_precision.setup_optimizer(optimizer)
        return super().connect(model, optimizers, lr_schedulers)

    @override
    def backward(  # type: ignore[override]
        self,
        tensor: Tensor,
        model: pl.LightningModule,
        optimizer: Any,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if self._lightning_backward:
            model.backward(tensor, *args, **kwargs)
        else:
            self.prec_precision.backward(tensor, model, *args, **kwargs)

    @override
    def optimizer_step(  # type: ignore[override]
        self,
        optimizer: Any,
        model: pl.LightningModule,
        closure: Callable[[], Any],
        **kwargs: Any,
    ) -> Any:
        """The closure (training step and backward), Lightning's ``on_before_optimizer_step`` hooks and gradient
        clipping on true (unscaled) gradients, then prec's guarded step.

        The step runs under the default dtype of the run, not the step context's: under manual optimization
        ``optimizer.step()`` is called inside ``training_step``, where a true precision has made its 16-bit dtype
        the default (automatic optimization steps outside it).
        """
        with default_dtype(self._step_dtype):
            return self._optimizer_step(optimizer, model, closure, **kwargs)

    def _optimizer_step(
        self, optimizer: Any, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        if isinstance(optimizer, torch.optim.LBFGS):  # re-evaluates the loss inside step(): prec steps through it
            wrapped = partial(self._wrap_closure, model, optimizer, closure)
            result = self.prec_precision.optimizer_step(optimizer, wrapped, **kwargs)
            self._log_metrics(model)
            return result
        closure_result = closure()
        if closure_result is None and model.automatic_optimization:
            return None  # training_step returned None: no backward ran, so there is nothing to step (as prec's Trainer)
        self.prec_precision.unscale_gradients(optimizer)
        self._after_closure(model, optimizer)
        result = self.prec_precision.optimizer_step(optimizer, **kwargs)
        self._log_metrics(model)
        return closure_result if closure_result is not None else result

    @override
    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: Any = "norm",
    ) -> None:
        """prec's clipping: on the gradients the optimizer steps, unscaled first."""
        algorithm = (
            "norm"
            if gradient_clip_algorithm is None
            else str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm))
        )
        self.prec_precision.clip_gradients(optimizer, clip_val, algorithm)

    def _log_metrics(self, model: pl.LightningModule) -> None:
        """Reading the numbers may synchronise with the device: only on the steps Lightning writes logs."""
        if not self.log_metrics:
            return
        trainer = model.trainer
        if (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1):
            return
        values = self.prec_precision.metrics()
        if values:
            model.log_dict(values, on_step=True, on_epoch=False, prog_bar=True, logger=bool(trainer.loggers))

    def _refuse_backward_override(self, module: pl.LightningModule) -> None:
        if self._lightning_backward or type(module).backward is pl.LightningModule.backward:
            return
        raise ConfigurationError(
            f"{type(module).__name__} overrides LightningModule.backward, but {self.prec_precision!r} runs its own"
            " backward (it scales the loss, or changes the gradients), which the override would replace. Remove the"
            " override (on_before_backward / on_after_backward run around prec's backward) or pick a precision whose"
            " backward is the plain one (32-true, bf16-true)."
        )


def _lightning_module(model: Module) -> pl.LightningModule | None:
    """The LightningModule inside a strategy's wrappers (DDP's ``module`` attribute)."""
    while not isinstance(model, pl.LightningModule):
        inner = getattr(model, "module", None)
        if not isinstance(inner, Module):
            return None
        model = inner
    return model
