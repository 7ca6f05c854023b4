"""Measure what each layer of a model would suffer in each candidate format, from a few float32 steps.

::

    measurements = measure(model, batch, loss_fn, formats=["bf16", "fp16", "e4m3", "e5m2"], steps=2,
                           optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))
    plan = make_plan(measurements, "bf16-true")

``model`` is never modified: the steps run on a float32 deep copy (and, for the lost-update ratio, on 16-bit
copies). ``batch`` is a batch or a zero-argument callable returning one (called once per step);
``loss_fn(model, batch)`` returns the scalar loss. Floating tensors of the batch are cast to the copy's dtype.
Per layer (the recorder's module filter) and per format this collects:

* ``forward_error`` / ``backward_error``: the relative error of the layer's output and input gradient when that
  layer alone runs in the format (:mod:`prec.numerics.emulate`), worst over the steps;
* ``overflow`` / ``underflow``: fractions of activations, output gradients and weights (:mod:`prec.numerics.stats`)
  in the float32 run, worst over the steps;
* ``lost_update``: per parameter, the lost-update ratio of a real optimizer step with the weights stored in the
  format (fp16/bf16 only, and only when an ``optimizer`` factory is given: the ratio depends on the optimizer and
  its learning rate), mean over the steps;
* ``matmul_size``: in x out features (0 for layers without a matmul).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.errors import ConfigurationError
from prec.numerics.emulate import CallCapture, layer_errors, matmul_size
from prec.numerics.formats import FORMATS, Format, FormatInput, formats_for_precision, parse_formats
from prec.numerics.recorder import DEFAULT_FORMATS, ModuleFilter, NumericsRecorder, select_modules

__all__ = ["LayerMeasurement", "Measurements", "OptimizerFactory", "measure"]

OptimizerFactory = Callable[[Iterator[torch.nn.Parameter]], Optimizer]
LossFn = Callable[[torch.nn.Module, Any], Tensor]
_WEIGHT_FORMATS = ("fp16", "bf16")  # formats a -true precision stores weights in, whose updates can be lost


@dataclass
class LayerMeasurement:
    """What one layer suffers in each format (see the module documentation)."""

    name: str
    type: str
    matmul_size: int
    forward_error: dict[str, float | None]
    backward_error: dict[str, float | None]
    overflow: dict[str, dict[str, float]]  # kind -> format -> fraction
    underflow: dict[str, dict[str, float]]
    lost_update: dict[str, dict[str, float]]  # format -> parameter -> ratio


@dataclass
class Measurements:
    """Every layer's measurements, in ``named_modules()`` order."""

    formats: tuple[str, ...]
    steps: int
    layers: dict[str, LayerMeasurement]
    optimizer: str | None

    def worst(self, fmt: str, what: str = "forward_error") -> list[tuple[str, float]]:
        """``(layer, value)`` sorted worst first, for ``what`` in forward_error / backward_error."""
        if what not in ("forward_error", "backward_error"):
            raise ConfigurationError(f"what={what!r}: accepted are 'forward_error' and 'backward_error'.")
        rows = [(name, getattr(layer, what).get(fmt)) for name, layer in self.layers.items()]
        return sorted(((n, v) for n, v in rows if v is not None), key=lambda row: row[1], reverse=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (infinite errors as the string ``"inf"``), e.g. for ``json.dumps``."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            return value

        return {
            "formats": list(self.formats),
            "steps": self.steps,
            "optimizer": self.optimizer,
            "layers": {name: clean(asdict(layer)) for name, layer in self.layers.items()},
        }


def model_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of ``model`` with its floating parameters and buffers in ``dtype``, sharing nothing with it.

    A forward replaced on an instance by a wrapper of the original's bound method (prec's ``keep_float32`` wraps
    kept modules so) would still run the original module after ``copy.deepcopy``; such a wrapper is dropped in the
    copy, which is cast to one dtype as a whole and needs no per-module casting."""
    originals = dict(model.named_modules())
    copied = copy.deepcopy(model)
    for name, module in copied.named_modules():
        forward = vars(module).get("forward")
        target = forward
        while target is not None and hasattr(target, "__wrapped__"):
            target = target.__wrapped__
        if forward is not None and getattr(target, "__self__", None) is originals.get(name):
            del vars(module)["forward"]
    return copied.to(dtype)


def cast_batch(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of a (nested) batch cast to ``dtype``; everything else as is."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast_batch(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: cast_batch(item, dtype) for key, item in value.items()}
    return value


def _worst(into: dict[str, dict[str, float]], kind: str, fmt: str, value: float) -> None:
    slot = into.setdefault(kind, {})
    slot[fmt] = max(slot.get(fmt, 0.0), value)


def measure(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    formats: Iterable[FormatInput] | FormatInput = DEFAULT_FORMATS,
    *,
    steps: int = 2,
    precision: str | None = None,
    optimizer: OptimizerFactory | None = None,
    module_filter: ModuleFilter | None = None,
) -> Measurements:
    """Measure every chosen layer of ``model`` in every format (the formats of ``precision`` are added)."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise ConfigurationError("loss_fn must be a callable (model, batch) -> scalar loss tensor.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigurationError(f"steps must be an int >= 1, got {steps!r}.")
    if optimizer is not None and not callable(optimizer):
        raise ConfigurationError("optimizer must be a callable (parameters) -> torch.optim.Optimizer, or None.")
    chosen = list(parse_formats(formats, argument="formats"))
    if precision is not None:
        roles = formats_for_precision(precision)
        chosen += [FORMATS[name] for name in (roles.forward, roles.gradients, roles.weights)]
    fmts = parse_formats(chosen)
    next_batch: Callable[[], Any] = batch if callable(batch) else (lambda: batch)
    batches = [next_batch() for _ in range(steps)]

    reference = model_copy(model, torch.float32)
    modules = select_modules(reference, module_filter)
    if not modules:
        raise ConfigurationError("module_filter selected no module of the model: there is nothing to measure.")
    layers = {
        name: LayerMeasurement(name, type(module).__name__, matmul_size(module), {}, {}, {}, {}, {})
        for name, module in modules.items()
    }
    recorder = NumericsRecorder(reference, fmts, ("activations", "gradients", "weights"), module_filter)
    capture = CallCapture(modules)
    opt = optimizer(reference.parameters()) if optimizer is not None else None
    for step_batch in batches:
        reference.zero_grad(set_to_none=True)
        recorder.start()
        with capture.active():
            loss_fn(reference, cast_batch(step_batch, torch.float32)).backward()
        result = recorder.stop().to_dict()
        for name, module in modules.items():
            layer = layers[name]
            for kind, stats in result.get(name, {}).items():
                for fmt in fmts:
                    _worst(layer.overflow, kind, fmt.name, stats[fmt.name]["overflow"])
                    _worst(layer.underflow, kind, fmt.name, stats[fmt.name]["underflow"])
            if capture.calls[name]:
                for fmt in fmts:
                    forward, backward = layer_errors(module, capture.calls[name], fmt)
                    _keep_max(layer.forward_error, fmt.name, forward)
                    _keep_max(layer.backward_error, fmt.name, backward)
        capture.clear()
        if opt is not None:
            opt.step()
    if optimizer is not None:
        for fmt in fmts:
            if fmt.name in _WEIGHT_FORMATS:
                _lost_updates(model, batches, loss_fn, fmt, optimizer, module_filter, layers)
    return Measurements(
        formats=tuple(fmt.name for fmt in fmts),
        steps=steps,
        layers=layers,
        optimizer=None if opt is None else type(opt).__name__,
    )


def _keep_max(into: dict[str, float | None], fmt: str, value: float | None) -> None:
    if value is None:
        into.setdefault(fmt, None)
        return
    previous = into.get(fmt)
    into[fmt] = value if previous is None else max(previous, value)


def _lost_updates(
    model: torch.nn.Module,
    batches: list[Any],
    loss_fn: LossFn,
    fmt: Format,
    optimizer: OptimizerFactory,
    module_filter: ModuleFilter | None,
    layers: dict[str, LayerMeasurement],
) -> None:
    """Train a copy stored in ``fmt`` for the same batches and average each parameter's lost-update ratio."""
    low = model_copy(model, fmt.dtype)
    opt = optimizer(low.parameters())
    recorder = NumericsRecorder(low, [fmt], kinds=("updates",), module_filter=module_filter)
    sums: dict[tuple[str, str], float] = {}
    for step_batch in batches:
        low.zero_grad(set_to_none=True)
        recorder.start()
        loss_fn(low, cast_batch(step_batch, fmt.dtype)).backward()
        recorder.before_optimizer_step(opt)
        opt.step()
        recorder.after_optimizer_step()
        for name, stats in recorder.stop().to_dict().items():
            for param, ratio in stats.get("lost_update_by_parameter", {}).items():
                sums[(name, param)] = sums.get((name, param), 0.0) + ratio / len(batches)
    for (name, param), ratio in sums.items():
        if name in layers:
            layers[name].lost_update.setdefault(fmt.name, {})[param] = ratio
