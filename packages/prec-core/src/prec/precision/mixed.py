"""Mixed precisions: float32 weights, autocast math in 16 bit, and an optional dynamic grad scaler."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.options import Option, check_options, is_number, is_positive_int
from prec.precision.base import Precision, apply_to_tensors, to_float32

#: The default floor under the loss scale: a scale that halves to 0 would turn the next finite step into
#: 0 x (1/0) = NaN in every weight; DeepSpeed's fp16 optimizer uses the same floor.
DEFAULT_MIN_SCALE = 1.0
#: ``torch.amp.GradScaler``'s default starting scale.
DEFAULT_INIT_SCALE = 2.0**16
#: The grad scaler's settings (``enabled`` is not one: pass ``scaler=None``) and ``min_scale``, prec's floor under
#: the loss scale: the one declaration, used by ``MixedPrecision(..., scaler=True, **settings)`` and by every
#: plugin's ``precision_options`` alike.
SCALER_SETTINGS: tuple[Option, ...] = (
    Option("init_scale", "a finite number > 0", lambda v: is_number(v) and 0 < v < math.inf),
    Option("growth_factor", "a finite number > 1", lambda v: is_number(v) and 1 < v < math.inf),
    Option("backoff_factor", "a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1),
    Option("growth_interval", "an int >= 1", is_positive_int),
    Option("min_scale", "a finite number > 0, at most init_scale", lambda v: is_number(v) and 0 < v < math.inf),
)
#: Their names.
SCALER_OPTIONS: tuple[str, ...] = tuple(option.name for option in SCALER_SETTINGS)


class MixedPrecision(Precision):
    """Autocast to ``dtype`` on ``device_type`` inside the steps; weights and optimizer state stay float32.

    Args:
        name: canonical precision name (``"bf16-mixed"``, ``"16-mixed"``).
        device_type: the autocast device type (``"cpu"``, ``"cuda"``, ``"xla"``).
        dtype: the autocast dtype.
        scaler: a ``torch.amp.GradScaler`` to scale the loss (needed for float16), ``True`` to build one with
            ``scaler_options``, or ``None`` for no scaling (bfloat16 has float32's range and needs none).
        cache_enabled: autocast's weight-cast cache (turn off to save memory when weights change inside a step).
        scaler_options: ``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval`` and
            ``min_scale``: the floor the loss scale never goes below (default :data:`DEFAULT_MIN_SCALE`).

    Skip tracking does not synchronise with the device: the inf/NaN flags stay on the device until
    :attr:`step_skipped`, :attr:`skipped_steps` or :meth:`metrics` is read.
    """

    def __init__(
        self,
        name: str,
        device_type: str,
        dtype: torch.dtype,
        *,
        scaler: torch.amp.GradScaler | bool | None = None,
        cache_enabled: bool = True,
        **scaler_options: Any,
    ) -> None:
        self.name = name
        self.device_type = device_type
        self.compute_dtype = dtype
        self.cache_enabled = bool(cache_enabled)
        self.min_scale = DEFAULT_MIN_SCALE
        if scaler is True:
            scaler_options = dict(_check_scaler_options(name, scaler_options))
            self.min_scale = float(scaler_options.pop("min_scale", DEFAULT_MIN_SCALE))
            scaler = torch.amp.GradScaler(device_type, **scaler_options)
        elif scaler_options:
            check_options(name, scaler_options, SCALER_SETTINGS, note=_NOT_SCALER_OPTION)  # unknown: say so
            raise ConfigurationError(
                f"{name} has no grad scaler, so {sorted(scaler_options)} cannot be applied."
                if not scaler
                else "pass scaler options when building the scaler yourself, not both."
            )
        if scaler is not None and scaler is not False:
            _check_scaler(name, scaler, device_type)
        self.scaler: torch.amp.GradScaler | None = scaler or None
        self._unscaled: set[int] = set()
        self._stepped = False  # scaler.update() is only valid after at least one scaler.step()
        self._iteration_flags: list[Tensor] = []  # found-inf flags of this iteration's steps, on the device
        self._iteration_skipped: bool | None = False  # resolved value of the flags (None: not read yet)

    @override
    def forward_context(self) -> AbstractContextManager[None]:
        return torch.autocast(self.device_type, dtype=self.compute_dtype, cache_enabled=self.cache_enabled)

    @override
    def convert_output(self, data: Any) -> Any:
        return apply_to_tensors(data, to_float32)

    # -- skip bookkeeping -----------------------------------------------------------------------------------
    @property  # type: ignore[override]
    def step_skipped(self) -> bool:
        """Whether an optimizer step of the last iteration was skipped for inf/NaN gradients (with several
        optimizers stepped before one :meth:`update_scaler`: whether any of them was)."""
        if self._iteration_skipped is None:
            self._iteration_skipped = any(bool(flag.item()) for flag in self._iteration_flags)
        return self._iteration_skipped

    @step_skipped.setter
    def step_skipped(self, value: bool | Tensor) -> None:
        self._iteration_flags = [value] if isinstance(value, Tensor) else []
        self._iteration_skipped = None if isinstance(value, Tensor) else bool(value)

    def _record_step(self, optimizer: Optimizer, found_inf_per_device: dict[Any, Tensor]) -> None:
        if not self._stepped:  # first step of a new iteration
            self._iteration_flags = []
        self._iteration_skipped = None
        flags = list(found_inf_per_device.values())
        if not flags:  # an optimizer on the legacy protocol that records nothing: nothing to count
            self._iteration_skipped = None if self._iteration_flags else False
            return
        flag = flags[0] if len(flags) == 1 else sum(f.to(flags[0].device, non_blocking=True) for f in flags)
        skipped = flag.gt(0).to(torch.int64)  # type: ignore[union-attr]
        self._iteration_flags.append(skipped)
        self.guard.record(optimizer, skipped, self._current_scale, loss_scaling=True)

    def _current_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    # -- scaler ---------------------------------------------------------------------------------------------
    @override
    def setup_module(self, module: torch.nn.Module) -> None:
        super().setup_module(module)
        if self.scaler is None:
            return
        low = sorted({str(p.dtype) for p in module.parameters() if p.requires_grad and p.dtype in _HALF_DTYPES})
        if low:
            raise ConfigurationError(
                f"{self.name} keeps float32 master weights and scales their gradients, but the model has"
                f" {', '.join(low)} trainable parameters (torch would fail later with 'Attempting to unscale FP16"
                " gradients'). Build the model in float32 (drop .half()/.to(dtype)), or pick a true precision"
                " such as '16-true' or 'bf16-true'."
            )

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> None:
        if self.scaler is not None and isinstance(optimizer, torch.optim.LBFGS):
            raise ConfigurationError(
                f"{self.name} cannot drive torch.optim.LBFGS: LBFGS re-evaluates the loss inside step() through its"
                " closure, which the grad scaler cannot scale or check for inf. Use bf16-mixed or 32-true with"
                " LBFGS, or a first-order optimizer with 16-mixed."
            )

    @override
    def backward(self, tensor: Tensor, module: torch.nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            self.guard.last_loss = tensor  # a skip report tells a NaN loss from an overflow of the scaled one
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    @override
    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is None or id(optimizer) in self._unscaled:
            return
        if _unscales_internally(optimizer):
            raise ConfigurationError(
                f"{type(optimizer).__name__} unscales its gradients inside step(grad_scaler=...), so they cannot"
                " be unscaled earlier for gradient clipping or on_before_optimizer_step. Use torch's own"
                " optimizers (fused ones included, they accept unscaled gradients) or drop gradient clipping."
            )
        if _has_gradients(optimizer):  # no gradients: nothing to unscale (and torch would record no inf check)
            self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None = None,
        *,
        update: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Step through the scaler: an inf/NaN step is skipped and the scale backs off (at :meth:`update_scaler`,
        which runs here unless ``update=False``: several optimizers stepped from one backward pass must update
        once, after all of them, as torch's AMP recipe says)."""
        if self.scaler is None:
            self.step_skipped = False
            return super().optimizer_step(optimizer, closure, **kwargs)
        self.setup_optimizer(optimizer)  # a user's own loop may never have called it
        # The scaler cannot step through a closure: run it first (it computes and scales the gradients).
        closure_result = closure() if closure is not None else None
        self._unscaled.discard(id(optimizer))
        if not _has_gradients(optimizer):
            # No parameter of this optimizer got a gradient (frozen, or unused this step): torch's scaler would
            # assert; a plain step is a no-op for the parameters and keeps LR schedulers in order.
            if not self._stepped:
                self.step_skipped = False
            result = optimizer.step(**kwargs)
        else:
            result = self.scaler.step(optimizer, **kwargs)
            state = self.scaler._per_optimizer_states[id(optimizer)]  # noqa: SLF001 - torch has no public "skipped" API
            self._record_step(optimizer, state["found_inf_per_device"])
            self._stepped = True
        if update:
            self.update_scaler()
        return closure_result if closure is not None else result

    @override
    def bind_optimizer_step(self, optimizer: Optimizer) -> Callable[[], Any]:
        if self.scaler is None and type(self).optimizer_step is MixedPrecision.optimizer_step:
            return self._bind_guarded_step(optimizer)  # no scaler: exactly the base class's guarded step
        return super().bind_optimizer_step(optimizer)

    @override
    def update_scaler(self) -> None:
        """Adjust the scale after the step(s) of one iteration (grow after a run of good steps, back off on inf)."""
        if self.scaler is not None and self._stepped:
            self.scaler.update()
            # The floor, applied on the device (no sync): torch's scaler keeps halving down to exactly 0.0.
            scale = getattr(self.scaler, "_scale", None)  # torch has no public in-place accessor for the scale
            if scale is not None:
                scale.clamp_(min=self.min_scale)
            self._stepped = False
            self._unscaled.clear()

    @override
    def metrics(self) -> dict[str, float]:
        if self.scaler is None:
            return super().metrics()
        return {"loss_scale": float(self.scaler.get_scale()), "skipped_steps": float(self.skipped_steps)}

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.scaler is not None:
            state = {"scaler": self.scaler.state_dict(), **self.guard.state_dict()}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
        self.guard.load_state_dict(state_dict)

    @override
    def teardown(self) -> None:
        """Finish an iteration a failed run left half done, so the next run starts from a clean scaler."""
        if self.scaler is not None:
            self.update_scaler()
            self.scaler._per_optimizer_states.clear()  # noqa: SLF001 - forget unscale_() without a step()
        self._unscaled.clear()
        self._stepped = False

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device_type={self.device_type!r},"
            f" dtype={self.compute_dtype}, scaler={self.scaler is not None})"
        )


_HALF_DTYPES = (torch.float16, torch.bfloat16)


_NOT_SCALER_OPTION = (
    "; MixedPrecision(...) takes only grad-scaler settings as extra keywords (keep_float32 and the other"
    " precision options are applied by prec.precision.standard.build_mixed)"
)


def _check_scaler_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown or out-of-range scaler options here, with the option's name, instead of torch's bare
    ``TypeError``/``AssertionError`` (or a scale that silently never changes)."""
    note = " (for no loss scaling use precision='bf16-mixed')" if "enabled" in options else _NOT_SCALER_OPTION
    checked = check_options(name, options, SCALER_SETTINGS, note=note)
    init_scale = checked.get("init_scale", DEFAULT_INIT_SCALE)
    if checked.get("min_scale", DEFAULT_MIN_SCALE) > init_scale:
        raise ConfigurationError(
            f"precision_options for {name}: min_scale={checked['min_scale']!r} is above init_scale={init_scale!r};"
            " the floor under the loss scale must be at most its starting value."
        )
    return checked


def _check_scaler(name: str, scaler: Any, device_type: str) -> None:
    if not isinstance(scaler, torch.amp.GradScaler):
        raise ConfigurationError(f"{name}: scaler={scaler!r} must be a torch.amp.GradScaler, True or None.")
    if not scaler.is_enabled():
        raise ConfigurationError(
            f"{name}: the GradScaler passed is disabled (enabled=False, or its device is not available), so it would"
            " neither scale the loss nor skip inf/NaN steps. Pass an enabled scaler, or scaler=None for no scaling."
        )
    scaler_device = getattr(scaler, "_device", device_type)
    if scaler_device != device_type:
        raise ConfigurationError(
            f"{name}: the GradScaler was built for device {scaler_device!r} but this precision autocasts on"
            f" {device_type!r}. Build it as torch.amp.GradScaler({device_type!r}, ...)."
        )


def _has_gradients(optimizer: Optimizer) -> bool:
    return any(param.grad is not None for group in optimizer.param_groups for param in group["params"])


def _unscales_internally(optimizer: Optimizer) -> bool:
    """An optimizer on the old protocol that takes the scaler into ``step(grad_scaler=...)`` and unscales
    there. Fused torch optimizers accept pre-unscaled gradients (the scaler then passes no scale), so they
    are fine; only this legacy protocol makes an earlier unscale impossible."""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    return "grad_scaler" in inspect.signature(optimizer.step).parameters
