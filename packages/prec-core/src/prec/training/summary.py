"""A precision-aware model summary: what a model costs in memory under a given precision.

``summarize(model, precision, optimizer=None)`` counts parameters per dtype and the bytes of weights, gradients,
optimizer state and extras (float32 master weights, Kahan compensation, the grad scaler) as the precision will
store them, whether or not the model was converted yet. Optimizer state is measured when the optimizer has
stepped and estimated from its type before. On CUDA, pass the device to record the peak memory of the first steps::

    summary = prec.training.summary.summarize(model, precision, optimizer)
    print(summary)            # a table
    summary.total_bytes       # the number
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from prec.precision.base import Precision

__all__ = ["ModelSummary", "format_bytes", "optimizer_state_slots", "summarize"]

#: Tensors of optimizer state per parameter element, by optimizer type (before its first step).
_STATE_SLOTS: dict[str, int] = {
    "Adam": 2,
    "AdamW": 2,
    "NAdam": 2,
    "RAdam": 2,
    "Adamax": 2,
    "Adadelta": 2,
    "Adagrad": 1,
    "Rprop": 2,
    "ASGD": 2,
    "SGD": 0,
    "RMSprop": 1,
    "LBFGS": 0,
}


def optimizer_state_slots(optimizer: torch.optim.Optimizer) -> int | None:
    """How many parameter-sized state tensors ``optimizer`` keeps (``None``: unknown type)."""
    name = type(optimizer).__name__
    if name not in _STATE_SLOTS:
        return None
    group = optimizer.defaults
    slots = _STATE_SLOTS[name]
    if name == "SGD" and group.get("momentum", 0):
        slots = 1
    if name in ("Adam", "AdamW") and group.get("amsgrad", False):
        slots += 1
    if name == "RMSprop":
        slots += int(bool(group.get("momentum", 0))) + int(bool(group.get("centered", False)))
    return slots


@dataclass
class ModelSummary:
    """Memory of a model under a precision. Byte counts are exact for weights, gradients and extras; optimizer
    state is exact when :attr:`optimizer_state_measured`, else estimated from the optimizer type."""

    precision: str
    parameters_by_dtype: dict[str, int]
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int | None
    optimizer_state_measured: bool
    extras: dict[str, int] = field(default_factory=dict)
    cuda_peak_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + (self.optimizer_state_bytes or 0) + sum(self.extras.values())

    @property
    def parameters(self) -> int:
        return sum(self.parameters_by_dtype.values())

    def bytes_per_parameter(self) -> float:
        return self.total_bytes / max(self.parameters, 1)

    def as_dict(self) -> dict[str, Any]:
        """The fields and the totals, for JSON."""
        return {**asdict(self), "total_bytes": self.total_bytes, "bytes_per_parameter": self.bytes_per_parameter()}

    def rows(self) -> list[tuple[str, str]]:
        state = "unknown" if self.optimizer_state_bytes is None else format_bytes(self.optimizer_state_bytes)
        rows = [(f"parameters ({dtype})", f"{count:,}") for dtype, count in sorted(self.parameters_by_dtype.items())]
        rows += [
            ("trainable", f"{self.trainable:,}"),
            ("weights", format_bytes(self.weight_bytes)),
            ("gradients", format_bytes(self.gradient_bytes)),
            ("optimizer state" + ("" if self.optimizer_state_measured else " (estimated)"), state),
        ]
        rows += [(name, format_bytes(value)) for name, value in self.extras.items()]
        rows.append(("total", f"{format_bytes(self.total_bytes)} ({self.bytes_per_parameter():.1f} bytes/parameter)"))
        if self.cuda_peak_bytes is not None:
            rows.append(("CUDA peak (first steps)", format_bytes(self.cuda_peak_bytes)))
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"Model summary under {self.precision}", "-" * (width + 20)]
        lines += [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)


def format_bytes(count: int) -> str:
    """``count`` bytes in the largest binary unit that keeps the number at least 1 (``"1.50 KiB"``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _stored_dtype(precision: Precision, param: torch.Tensor, kept: bool) -> torch.dtype:
    if not param.is_floating_point():
        return param.dtype
    if kept:
        return torch.float32
    return precision.param_dtype


def summarize(
    model: torch.nn.Module,
    precision: Precision,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    cuda_device: torch.device | int | None = None,
) -> ModelSummary:
    """The memory ``model`` takes under ``precision`` (see the module docstring). ``cuda_device``: read the
    peak allocated memory there (``torch.cuda.max_memory_allocated``) after the first steps."""
    policy = getattr(precision, "module_policy", None)
    kept = policy.kept_parameter_names(model) if policy else set()
    dtypes: Counter[str] = Counter()
    weight_bytes = gradient_bytes = trainable = low_precision = 0
    stored: dict[int, torch.dtype] = {}
    for name, param in model.named_parameters():
        dtype = _stored_dtype(precision, param, name in kept)
        stored[id(param)] = dtype
        size = param.numel() * dtype.itemsize
        dtypes[str(dtype).replace("torch.", "")] += param.numel()
        weight_bytes += size
        if param.requires_grad:
            trainable += param.numel()
            gradient_bytes += size
            if dtype in (torch.float16, torch.bfloat16):
                low_precision += param.numel()
    mode = getattr(precision, "master_weights", None)
    extras: dict[str, int] = {}
    if mode == "fp32":
        extras["master weights (float32)"] = 4 * low_precision
    elif mode == "kahan":
        extras["Kahan compensation (bfloat16)"] = 2 * low_precision
    scaler = getattr(precision, "scaler", None)
    if scaler is not None:
        extras["grad scaler"] = 8  # the scale (float32) and the growth tracker (int32)
    state_bytes, measured = _optimizer_state(model, optimizer, stored, mode)
    peak = None
    if cuda_device is not None and torch.cuda.is_available():
        peak = int(torch.cuda.max_memory_allocated(cuda_device))
    return ModelSummary(
        precision=precision.name,
        parameters_by_dtype=dict(dtypes),
        trainable=trainable,
        weight_bytes=weight_bytes,
        gradient_bytes=gradient_bytes,
        optimizer_state_bytes=state_bytes,
        optimizer_state_measured=measured,
        extras=extras,
        cuda_peak_bytes=peak,
    )


def _optimizer_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    stored: dict[int, torch.dtype],
    mode: Any,
) -> tuple[int | None, bool]:
    if optimizer is None:
        return 0, False
    if optimizer.state:
        total = sum(
            value.numel() * value.element_size()
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        )
        return total, True
    slots = optimizer_state_slots(optimizer)
    if slots is None:
        return None, False
    total = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not param.requires_grad:
                continue
            dtype = stored.get(id(param), param.dtype)
            if mode == "fp32" or not param.is_floating_point():
                dtype = torch.float32 if param.is_floating_point() else dtype
            total += slots * param.numel() * dtype.itemsize
    return total, False
