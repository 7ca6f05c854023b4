"""Per-layer telemetry of one training step: amax, underflow and overflow in each target format, lost updates.

Shaped for two callers, a Trainer callback and a loop of your own::

    recorder = NumericsRecorder(model, formats=["fp16", "bf16", "e4m3"])
    recorder.start()                          # hooks installed for this step only
    loss = loss_fn(model(x), y)
    loss.backward()
    recorder.before_optimizer_step(optimizer)  # after unscaling/clipping: snapshots for the update statistics
    optimizer.step()
    recorder.after_optimizer_step()
    result = recorder.stop()                  # every hook removed; tensors still on the device
    print(format_table(result.top_offenders(10)))
    logger.log_metrics(result.scalars())      # one synchronisation, here

Between :meth:`~NumericsRecorder.stop` and :meth:`~NumericsRecorder.start` the recorder has no hook installed and
costs nothing. Within a step every statistic stays on the tensors' device; only reading the result synchronises.
A recorded step costs a float32 copy of each tensor it measures, and with ``"updates"`` two float32 copies of the
recorded parameters and a float32 copy of their optimizer state until :meth:`~NumericsRecorder.after_optimizer_step`.

Kinds of tensor (``kinds=``):

``activations``
    the module's output (the first floating tensor of a tuple output, e.g. MultiheadAttention's attention output).
``gradients``
    the gradient of the module's output, recorded by a hook on the output tensor: the tensor a low-precision
    backward consumes (fp16 under 16-mixed, e5m2 in fp8). It includes whatever loss scale the loop applied; record
    a float32 step without a grad scaler to see the model's own gradients.
``weights``
    the module's own parameters (not its children's), measured at :meth:`~NumericsRecorder.start`.
``updates``
    the change of those parameters made by the optimizer step, and the lost-update ratio
    (:mod:`prec.numerics.updates`) under ``numerics/{module}/weights/lost_update`` (the module's parameters
    together) and ``numerics/{module}/{parameter}/lost_update`` (each, e.g. a norm's ``weight``); needs
    :meth:`~NumericsRecorder.before_optimizer_step` and :meth:`~NumericsRecorder.after_optimizer_step`.

The default filter selects Linear, convolutions, Embedding, normalisation layers (LayerNorm, RMSNorm, BatchNorm,
GroupNorm) and MultiheadAttention; ``module_filter(name, module) -> bool`` chooses instead. A module called several
times in a step (shared weights) is aggregated: the largest amax, the fractions over all calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from prec.errors import ConfigurationError
from prec.numerics.formats import Format, FormatInput, parse_formats
from prec.numerics.result import NumericsResult
from prec.numerics.stats import combine, log2_histogram, tensor_counts
from prec.numerics.updates import EffectiveWeight, float_value, intended_updates, update_products

__all__ = ["DEFAULT_FORMATS", "DEFAULT_MODULE_TYPES", "KINDS", "ModuleFilter", "NumericsRecorder", "default_filter"]

KINDS = ("activations", "gradients", "weights", "updates")
DEFAULT_FORMATS = ("fp16", "bf16", "e4m3", "e5m2")
ModuleFilter = Callable[[str, torch.nn.Module], bool]

_NORMS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)
#: The module types the default filter selects: where precision is decided (matmuls, lookups, normalisation).
DEFAULT_MODULE_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
    torch.nn.Embedding,
    torch.nn.EmbeddingBag,
    torch.nn.MultiheadAttention,
    *_NORMS,
)


def default_filter(name: str, module: torch.nn.Module) -> bool:
    """True for the :data:`DEFAULT_MODULE_TYPES`."""
    return isinstance(module, DEFAULT_MODULE_TYPES)


def first_float_tensor(value: Any) -> Tensor | None:
    """The tensor a module's output stands for: itself, or the first floating tensor of a tuple/list."""
    if isinstance(value, Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, Tensor) and item.is_floating_point():
                return item
    return None


def select_modules(module: torch.nn.Module, module_filter: ModuleFilter | None) -> dict[str, torch.nn.Module]:
    """``{qualified name: module}`` of what ``module_filter`` (default :func:`default_filter`) chooses."""
    if module_filter is not None and not callable(module_filter):
        raise ConfigurationError(
            f"module_filter must be a callable (name, module) -> bool, got {type(module_filter).__name__}."
        )
    chosen = module_filter or default_filter
    return {name: child for name, child in module.named_modules() if chosen(name, child)}


class NumericsRecorder:
    """Records per-module numerics for one step at a time; see the module documentation."""

    def __init__(
        self,
        module: torch.nn.Module,
        formats: Iterable[FormatInput] | FormatInput = DEFAULT_FORMATS,
        kinds: Sequence[str] = KINDS,
        module_filter: ModuleFilter | None = None,
        *,
        histograms: bool = False,
        effective_weight: EffectiveWeight | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ConfigurationError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
        if isinstance(kinds, str) or not all(kind in KINDS for kind in kinds) or not kinds:
            raise ConfigurationError(f"kinds={kinds!r}: give a non-empty sequence of {', '.join(KINDS)}.")
        self.formats: tuple[Format, ...] = parse_formats(formats, argument="formats")
        self.kinds = tuple(kind for kind in KINDS if kind in kinds)
        self.histograms = histograms
        self.effective_weight = effective_weight
        self.modules = select_modules(module, module_filter)
        self._handles: list[RemovableHandle] = []
        self._counts: dict[tuple[str, str], Tensor] = {}
        self._histograms: dict[tuple[str, str], Tensor] = {}
        self._products: dict[tuple[str, str], Tensor] = {}
        # (module, parameter name, parameter, value before the step, intended update)
        self._pending: list[tuple[str, str, Tensor, Tensor, Tensor]] = []
        self._active = False

    @property
    def active(self) -> bool:
        """Whether hooks are installed (between :meth:`start` and :meth:`stop`)."""
        return self._active

    def start(self) -> None:
        """Install the hooks for one step and measure the weights."""
        if self._active:
            raise ConfigurationError("NumericsRecorder.start() called twice; call stop() to end the step first.")
        self._counts, self._histograms, self._products, self._pending = {}, {}, {}, []
        self._active = True
        if "activations" in self.kinds or "gradients" in self.kinds:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        if "weights" in self.kinds:
            for name, module in self.modules.items():
                for param in module.parameters(recurse=False):
                    if param.is_floating_point():
                        self._add(name, "weights", param)

    def before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Snapshot the weights and compute the intended float32 updates (with ``"updates"`` in ``kinds``).

        Call it once the gradients are final (unscaled, clipped), right before the optimizer steps."""
        if not self._active:
            raise ConfigurationError("NumericsRecorder.before_optimizer_step() needs start() first.")
        if "updates" not in self.kinds:
            return
        owned = {
            id(param): (name, param_name)
            for name, module in self.modules.items()
            for param_name, param in module.named_parameters(recurse=False)
        }
        mine = [p for group in optimizer.param_groups for p in group["params"] if id(p) in owned]
        intended = intended_updates(optimizer, mine, effective_weight=self.effective_weight)
        for param, d_int in intended.items():
            before = float_value(param, self.effective_weight)
            self._pending.append((*owned[id(param)], param, before, d_int))

    def after_optimizer_step(self) -> None:
        """Measure the updates the optimizer step made since :meth:`before_optimizer_step`."""
        if not self._active:
            raise ConfigurationError("NumericsRecorder.after_optimizer_step() needs start() first.")
        for name, param_name, param, before, d_int in self._pending:
            after = float_value(param, self.effective_weight)
            self._add(name, "updates", after - before)
            products = update_products(before, after, d_int)
            previous = self._products.get((name, param_name))
            self._products[(name, param_name)] = products if previous is None else previous + products
        self._pending = []

    def stop(self) -> NumericsResult:
        """Remove every hook and return the step's result (its tensors stay on the device until read)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False
        self._pending = []
        return NumericsResult(
            formats=self.formats,
            counts=dict(self._counts),
            products=dict(self._products),
            histograms=dict(self._histograms) if self.histograms else None,
        )

    # -- hooks -------------------------------------------------------------------------------------------------
    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not self._active:
                return
            tensor = first_float_tensor(output)
            if tensor is None:
                return
            if "activations" in self.kinds:
                self._add(name, "activations", tensor)
            if "gradients" in self.kinds and tensor.requires_grad:
                self._handles.append(tensor.register_hook(self._gradient_hook(name)))

        return hook

    def _gradient_hook(self, name: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._active:
                self._add(name, "gradients", grad)

        return hook

    def _add(self, name: str, kind: str, tensor: Tensor) -> None:
        with torch.no_grad():
            key = (name, kind)
            self._counts[key] = combine(self._counts.get(key), tensor_counts(tensor, self.formats))
            if self.histograms:
                counts = log2_histogram(tensor)
                previous = self._histograms.get(key)
                self._histograms[key] = counts if previous is None else previous + counts
