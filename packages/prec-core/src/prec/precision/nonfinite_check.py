"""The non-finite check's kernels and flags: which kernel checks gradients on a device, and how its flag is read.

torch's fused AMP kernel checks a list of gradients in one launch on cpu and cuda; xla gets plain tensor ops. On
the CPU the flag is read through a numpy view (no torch call); elsewhere with ``.item()``, or not at all when a
fused optimizer takes it and skips on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.errors import ConfigurationError

__all__ = ["check_for", "host_view", "same_device", "takes_found_inf"]


def check_for(device: torch.device) -> Callable[[list[Tensor], Tensor, Tensor], None]:
    """The non-finite check for ``device``: torch's fused AMP kernel on cpu and cuda (it multiplies by the scale,
    here 1, in place); elsewhere (xla, which refuses a float32 scale on 16-bit gradients) plain tensor ops."""
    if device.type in ("cpu", "cuda"):
        return torch._amp_foreach_non_finite_check_and_unscale_
    return _generic_check


def _generic_check(grads: list[Tensor], found: Tensor, one: Tensor) -> None:
    finite = torch.stack([torch.isfinite(grad).all() for grad in grads]).all()
    found.copy_(torch.logical_not(finite).to(found.dtype))


def host_view(flag: Tensor) -> Any:
    """A memoryview of a CPU flag's bytes (``view[()]`` reads it as a Python float): no torch call and no numpy
    scalar per read (the CPU kernel has finished when it returns); ``None`` off the CPU or without numpy (then the
    flag is read with ``.item()``)."""
    if flag.device.type != "cpu":
        return None
    try:
        return memoryview(flag.numpy())
    except (RuntimeError, ImportError):  # torch without numpy support
        return None


def takes_found_inf(optimizer: Optimizer) -> bool:
    """torch's fused optimizers read ``optimizer.found_inf`` in ``step()`` and skip on the device."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and any(
        group.get("fused") for group in optimizer.param_groups
    )


def same_device(grads: list[Tensor], device: torch.device) -> Iterable[Tensor]:
    if all(grad.device == device for grad in grads):
        return grads
    raise ConfigurationError(
        "the non-finite guard found gradients on several devices in one optimizer; use one optimizer per device"
        " or Trainer(nonfinite='off')."
    )
