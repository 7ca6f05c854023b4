"""Mixed precisions: float32 weights, autocast math in 16 bit, and an optional dynamic grad scaler."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.errors import ConfigurationError
from prec.precision.base import Precision, apply_to_tensors, to_float32


class MixedPrecision(Precision):
    """Autocast to ``dtype`` on ``device_type`` inside the steps; weights and optimizer state stay float32.

    Args:
        name: canonical precision name (``"bf16-mixed"``, ``"16-mixed"``).
        device_type: the autocast device type (``"cpu"``, ``"cuda"``, ``"xla"``).
        dtype: the autocast dtype.
        scaler: a ``torch.amp.GradScaler`` to scale the loss (needed for float16), ``True`` to build one with
            ``scaler_options``, or ``None`` for no scaling (bfloat16 has float32's range and needs none).
        cache_enabled: autocast's weight-cast cache (turn off to save memory when weights change inside a step).
        scaler_options: ``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``.
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
        self.cache_enabled = cache_enabled
        if scaler is True:
            scaler = torch.amp.GradScaler(device_type, **scaler_options)
        elif scaler_options:
            raise ConfigurationError(
                f"{name} has no grad scaler, so {sorted(scaler_options)} cannot be applied."
                if not scaler
                else "pass scaler options when building the scaler yourself, not both."
            )
        self.scaler: torch.amp.GradScaler | None = scaler or None
        self._unscaled: set[int] = set()
        self._stepped = False  # scaler.update() is only valid after at least one scaler.step()
        self.step_skipped = False
        self.skipped_steps = 0

    def forward_context(self) -> AbstractContextManager[None]:
        return torch.autocast(self.device_type, dtype=self.compute_dtype, cache_enabled=self.cache_enabled)

    def convert_output(self, data: Any) -> Any:
        return apply_to_tensors(data, to_float32)

    # -- scaler ---------------------------------------------------------------------------------------------
    def setup_module(self, module: torch.nn.Module) -> None:
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

    def setup_optimizer(self, optimizer: Optimizer) -> None:
        if self.scaler is not None and isinstance(optimizer, torch.optim.LBFGS):
            raise ConfigurationError(
                f"{self.name} cannot drive torch.optim.LBFGS: LBFGS re-evaluates the loss inside step() through its"
                " closure, which the grad scaler cannot scale or check for inf. Use bf16-mixed or 32-true with"
                " LBFGS, or a first-order optimizer with 16-mixed."
            )

    def backward(self, tensor: Tensor, module: torch.nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is None or id(optimizer) in self._unscaled:
            return
        if _unscales_internally(optimizer):
            raise ConfigurationError(
                f"{type(optimizer).__name__} unscales its gradients inside step(grad_scaler=...), so they cannot"
                " be unscaled earlier for gradient clipping or on_before_optimizer_step. Use torch's own"
                " optimizers (fused ones included, they accept unscaled gradients) or drop gradient clipping."
            )
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

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
        if closure is not None:
            closure_result = closure()  # the scaler cannot step through a closure: run it first
            kwargs = dict(kwargs)
        else:
            closure_result = None
        result = self.scaler.step(optimizer, **kwargs)
        state = self.scaler._per_optimizer_states[id(optimizer)]  # noqa: SLF001 - no public "was skipped" API
        skipped = bool(sum(v.item() for v in state["found_inf_per_device"].values()))
        self._unscaled.discard(id(optimizer))
        self.step_skipped = skipped
        self.skipped_steps += int(skipped)
        self._stepped = True
        if update:
            self.update_scaler()
        return closure_result if closure is not None else result

    def update_scaler(self) -> None:
        """Adjust the scale after the step(s) of one iteration (grow after a run of good steps, back off on inf)."""
        if self.scaler is not None and self._stepped:
            self.scaler.update()
            self._stepped = False
            self._unscaled.clear()

    def metrics(self) -> dict[str, float]:
        if self.scaler is None:
            return {}
        return {"loss_scale": float(self.scaler.get_scale()), "skipped_steps": float(self.skipped_steps)}

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])
            self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def teardown(self) -> None:
        self._unscaled.clear()
        self._stepped = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device_type={self.device_type!r},"
            f" dtype={self.compute_dtype}, scaler={self.scaler is not None})"
        )


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _unscales_internally(optimizer: Optimizer) -> bool:
    """An optimizer on the old protocol that takes the scaler into ``step(grad_scaler=...)`` and unscales
    there. Fused torch optimizers accept pre-unscaled gradients (the scaler then passes no scale), so they
    are fine; only this legacy protocol makes an earlier unscale impossible."""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    return "grad_scaler" in inspect.signature(optimizer.step).parameters
