"""The Precision base class. It is a no-op, and a no-op is exactly 32-true.

One hierarchy serves the Trainer and a user's own loop::

    precision = prec.get_precision("bf16-mixed", accelerator="cpu")
    model = precision.convert_module(model)
    for x, y in loader:
        x = precision.convert_input(x)
        with precision.forward_context():
            loss = loss_fn(model(x), y)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.errors import ConfigurationError
from prec.precision.guard import BOUND_STEP, NonFiniteGuard, NonFinitePolicy

if TYPE_CHECKING:
    from prec.accelerator import Accelerator

GRADIENT_CLIP_ALGORITHMS = ("norm", "value")
#: One reusable no-op context (``nullcontext`` is reentrant): a step enters it without building a new one.
_NO_CONTEXT: AbstractContextManager[None] = nullcontext()
#: The per-step methods a loop may leave uncalled while a class keeps them as the 32-true no-op (see
#: :attr:`Precision.passthrough`).
PER_STEP_METHODS = ("convert_input", "forward_context", "backward", "convert_output")


class default_dtype:  # noqa: N801 - used like a function: ``with default_dtype(torch.bfloat16):``
    """Set torch's default floating dtype for the body; restore the previous one even if the body raises.

    A small class rather than ``@contextmanager``: it is entered around every training step of the true
    precisions, where a generator-based context costs several Python calls more."""

    __slots__ = ("dtype", "previous")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc_info: object) -> None:
        torch.set_default_dtype(self.previous)


def apply_to_tensors(data: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``function`` to every tensor in nested lists, tuples (named too) and dicts; keep the containers."""
    if isinstance(data, Tensor):
        return function(data)
    if isinstance(data, (list, tuple)):
        converted = [apply_to_tensors(item, function) for item in data]
        if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
            return type(data)(*converted)
        return converted if type(data) is list else type(data)(converted)
    if isinstance(data, dict):
        return type(data)((key, apply_to_tensors(value, function)) for key, value in data.items())
    return data


def to_float32(tensor: Tensor) -> Tensor:
    """Cast a floating tensor of another width to float32; leave integers and float32 alone."""
    return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor


class Precision:
    """32-true: float32 weights and math, no loss scaling. Subclasses override only what they change.

    This class is the whole contract between a precision and the loops that drive it (the Trainer's, or your
    own): everything a loop or a strategy relies on is declared here, with a default that is correct for a
    subclass that overrides nothing.

    Attributes:
        name: the canonical precision string (``"32-true"``).
        param_dtype: the dtype floating-point parameters have after :meth:`convert_module`.
        compute_dtype: the dtype most math runs in inside :meth:`forward_context`.
        device_type: the torch device type this instance was built for, or ``None`` if any device works.
        output_dtype: the dtype of floating outputs after :meth:`convert_output` (``None``: left as computed).
        scaler: the ``torch.amp.GradScaler`` the loss is scaled with, or ``None``. A strategy may replace it with
            an equivalent one for its processes (FSDP: ``ShardedGradScaler``) by assigning it.
        passthrough: the per-step methods (:data:`PER_STEP_METHODS`) this class leaves as the 32-true no-op, so a
            loop may skip calling them. Computed for every subclass when it is defined: overriding a method
            removes it, so an override is never bypassed.
    """

    name: str = "32-true"
    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    device_type: str | None = None
    #: The dtype :meth:`convert_output` gives floating outputs (``None``: they stay in the compute dtype).
    output_dtype: torch.dtype | None = torch.float32
    scaler: torch.amp.GradScaler | None = None
    #: True where this precision's arithmetic is emulated in software on its accelerator (fp8 on a CPU): the
    #: numerics are the real ones, the speed is not. ``prec bench`` shows such a precision as not native.
    emulated: bool = False
    passthrough: ClassVar[frozenset[str]] = frozenset(PER_STEP_METHODS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.passthrough = frozenset(name for name in PER_STEP_METHODS if getattr(cls, name) is getattr(Precision, name))

    # -- the non-finite guard and skipped steps -----------------------------------------------------------------
    @property
    def guard(self) -> NonFiniteGuard:
        """The :class:`~prec.precision.guard.NonFiniteGuard` that keeps inf/NaN gradients out of the weights."""
        guard = self.__dict__.get("_guard")
        if guard is None:
            guard = self.__dict__["_guard"] = NonFiniteGuard()
        return guard

    def set_nonfinite_policy(self, policy: NonFinitePolicy | str) -> None:
        """Choose what happens to inf/NaN gradients (``"skip"``, ``"raise"``, ``"off"`` or a policy)."""
        self.guard.policy = NonFinitePolicy.coerce(policy)

    @property
    def step_skipped(self) -> bool:
        """Whether the last :meth:`optimizer_step` was skipped (inf/NaN gradients); LR schedulers then wait."""
        value = self.__dict__.get("_step_skipped", False)
        if isinstance(value, Tensor):  # decided on the device: read once, when somebody asks
            value = self.__dict__["_step_skipped"] = bool(value.item())
        return value

    @step_skipped.setter
    def step_skipped(self, value: bool | Tensor) -> None:
        self.__dict__["_step_skipped"] = value

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for inf/NaN gradients since creation (or since the state was loaded)."""
        return self.guard.skipped_steps()

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self.guard.load_state_dict({"skipped_steps": value, "consecutive_skips": self.guard.consecutive})

    def incompatibility(self, accelerator: Accelerator) -> str | None:
        """Why this instance cannot run on ``accelerator`` (``None``: it can). Checked when a precision instance is
        passed to the Trainer as ``plugins=[...]``."""
        expected = accelerator.device_type or accelerator.name
        if self.device_type is not None and self.device_type != expected:
            return (
                f"{self!r} was built for device type {self.device_type!r}, but the accelerator is {accelerator.name!r}"
            )
        return None

    def setup(self) -> None:
        """Apply global settings this precision needs for a run (called once at the start of each run, before
        :meth:`convert_module`); :meth:`teardown` undoes them."""

    # -- module and tensor creation ----------------------------------------------------------------------------
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast an already built module's parameters and buffers to this precision (in place, returned)."""
        return module

    def produced_param_dtypes(self) -> frozenset[torch.dtype]:
        """The dtypes :meth:`convert_module` may give floating parameters (float32 is always allowed for modules
        a ``keep_float32`` policy keeps). The default is :attr:`param_dtype`; a quantizing precision whose
        conversion stores other floating dtypes declares them here. The Trainer checks each conversion against
        it and names the plugin that broke it."""
        return frozenset({self.param_dtype})

    def tensor_init_context(self) -> AbstractContextManager[None]:
        """Context in which new tensors get this precision's dtype (the default dtype)."""
        return nullcontext()

    def module_init_context(self) -> AbstractContextManager[None]:
        """Context for building modules (``Trainer.init_module``, ``configure_model``): weights are born in
        :attr:`param_dtype`, never materialised in float32 first."""
        return self.tensor_init_context()

    def setup_module(self, module: torch.nn.Module) -> None:
        """Check a converted module before training; raise :class:`ConfigurationError` if it cannot work.
        Overrides call ``super().setup_module(module)``: it lets the non-finite guard name parameters."""
        self.guard.watch(module)

    def setup_optimizer(self, optimizer: Optimizer) -> None:
        """Check an optimizer before training (e.g. LBFGS cannot run with a grad scaler)."""

    def checkpoint_parameters(self, module: torch.nn.Module) -> AbstractContextManager[None]:
        """Context around reading or loading the optimizers' state of ``module`` for a sharded checkpoint.

        ``torch.distributed.checkpoint`` names optimizer state by the module's parameters, found by identity. A
        precision whose optimizer steps other tensors (bf16-true's float32 ``master_weights``) puts those in the
        module while the optimizer state is read or loaded; the default does nothing.
        """
        return nullcontext()

    # -- steps ----------------------------------------------------------------------------------------------
    def forward_context(self) -> AbstractContextManager[None]:
        """Context around each ``*_step``: autocast for mixed precisions, the default dtype for true ones."""
        return _NO_CONTEXT

    def convert_input(self, data: Any) -> Any:
        """Cast floating-point inputs (any nesting of tuples, lists and dicts) to the compute dtype."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Cast floating-point outputs back to float32, so code after the step sees one dtype."""
        return data

    def backward(self, tensor: Tensor, module: torch.nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        """Run backward from ``tensor`` (scaled by the grad scaler where there is one)."""
        tensor.backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Turn scaled gradients back into true ones; a no-op without a scaler. Safe to call twice per step."""

    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: float | None,
        algorithm: str = "norm",
        parameters: Iterable[Tensor] | None = None,
    ) -> Tensor | None:
        """Clip the gradients of ``optimizer``'s parameters after unscaling them; return the total norm.

        ``algorithm`` is ``"norm"`` (``clip_grad_norm_``, returns the norm before clipping) or ``"value"``
        (``clip_grad_value_``, returns ``None``). ``clip_val`` ``None`` or ``0`` means no clipping.
        """
        if algorithm not in GRADIENT_CLIP_ALGORITHMS:
            raise ConfigurationError(
                f"gradient_clip_algorithm={algorithm!r} is not valid; use one of {GRADIENT_CLIP_ALGORITHMS}."
            )
        if not clip_val:
            return None
        if clip_val < 0:
            raise ConfigurationError(f"gradient_clip_val={clip_val} must be >= 0.")
        self.unscale_gradients(optimizer)
        params = list(parameters) if parameters is not None else _optimizer_params(optimizer)
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
            return None
        return torch.nn.utils.clip_grad_norm_(params, clip_val)

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None = None,
        *,
        update: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Step ``optimizer`` (through the grad scaler where there is one) and return what ``step`` returned.

        The non-finite guard checks the gradients first: a step with inf/NaN gradients is not applied (or raises,
        by the guard's policy), and :attr:`step_skipped` says so. A step through a ``closure`` (LBFGS) computes its
        gradients inside ``step``, where they cannot be checked first: it is not guarded.
        ``update=False`` defers :meth:`update_scaler` when several optimizers step from one backward pass.
        """
        try:
            guard = self.__dict__["_guard"]  # the property, without a call per step
        except KeyError:
            guard = self.guard
        if closure is not None or not guard.active:
            self.step_skipped = False
            return self.apply_optimizer_step(optimizer, closure, **kwargs)
        if kwargs:
            return self._checked_step(optimizer, kwargs)
        # The Trainer's fast path: bound once per optimizer and kept on it, bound anew when its groups change.
        try:
            owner, groups, count, step = optimizer.__dict__[BOUND_STEP]
        except KeyError:
            return guard.cached_step(optimizer, self._bind_guarded_step)()
        if owner is guard and groups is optimizer.param_groups and count == len(groups):
            return step()
        return guard.cached_step(optimizer, self._bind_guarded_step)()

    def _checked_step(self, optimizer: Optimizer, kwargs: dict[str, Any]) -> Any:
        """The guarded step without binding: fused optimizers (the flag goes to the device), step arguments."""
        guard = self.guard
        found = guard.found_nonfinite(optimizer)
        if found is False:
            self.step_skipped = False
            return self.apply_optimizer_step(optimizer, None, **kwargs)
        if found is True:
            self.step_skipped = True
            guard.record(optimizer, True, _no_scale)
            return None
        # A fused optimizer takes the flag and skips on the device: nothing is read on the host here.
        optimizer.found_inf = found  # type: ignore[attr-defined] - torch's device-side skip protocol
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        try:
            result = self.apply_optimizer_step(optimizer, None, **kwargs)
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
        self.step_skipped = found
        guard.record(optimizer, found, _no_scale)
        return result

    def apply_optimizer_step(
        self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any
    ) -> Any:
        """Run ``optimizer.step`` once :meth:`optimizer_step` decided the step goes ahead; return its result.

        The seam for a precision whose optimizer steps other tensors than the model's parameters: bf16-true with
        ``master_weights="kahan"`` steps float32 working copies here. The guard has already checked the model's
        gradients, so an override never re-checks them.
        """
        return optimizer.step(closure, **kwargs) if closure is not None else optimizer.step(**kwargs)

    def bind_optimizer_step(self, optimizer: Optimizer) -> Callable[[], Any]:
        """``optimizer_step(optimizer)`` as a zero-argument callable, for a loop that steps the same optimizer
        every batch: bind once (per epoch, or after changing its param groups), call per step. The default is the
        non-finite guard's fast path when :meth:`optimizer_step` is not overridden; an override is always the
        one called."""
        cls = type(self)
        if (
            cls.optimizer_step is not Precision.optimizer_step
            or cls.apply_optimizer_step is not Precision.apply_optimizer_step
        ):
            return partial(self.optimizer_step, optimizer)
        return self._bind_guarded_step(optimizer)

    def _bind_guarded_step(self, optimizer: Optimizer) -> Callable[[], Any]:
        """The guard's bound step of ``optimizer``, stepping through :meth:`apply_optimizer_step` where a class
        overrides it."""
        overridden = type(self).apply_optimizer_step is not Precision.apply_optimizer_step
        return self.guard.bind_step(
            optimizer, self, self.apply_optimizer_step if overridden else None, partial(self._checked_step, kwargs={})
        )

    def update_scaler(self) -> None:
        """Adjust the loss scale once per iteration, after every optimizer stepped; a no-op without a scaler."""

    def metrics(self) -> dict[str, float]:
        """Numbers the Trainer logs automatically: the steps the non-finite guard skipped, once there are any (and
        the loss scale under a grad scaler). Reading them may synchronise with the device: loops read them at log
        flushes only."""
        skipped = self.skipped_steps if self.guard.active else 0
        return {"skipped_steps": float(skipped)} if skipped else {}

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume this precision exactly (skip counters; a grad scaler's state)."""
        state = self.guard.state_dict()
        return state if any(state.values()) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.guard.load_state_dict(state_dict)

    def teardown(self) -> None:
        """Undo anything global this precision changed. Called once at the end of each run; idempotent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _no_scale() -> None:
    return None


def _optimizer_params(optimizer: Optimizer) -> list[Tensor]:
    return [param for group in optimizer.param_groups for param in group["params"]]
