"""Target number formats, parsed once into objects that carry their meaning.

A :class:`Format` knows its range (largest finite value, smallest normal and subnormal magnitudes), its mantissa
bits and whether it is used with per-tensor scaling (the fp8 formats, as torchao uses them: ``scale = fmt.max /
amax``, so the largest magnitude of a tensor lands on the format's largest value). :func:`parse_formats` turns
user input (``"fp16"``, ``"bfloat16"``, ``torch.float8_e4m3fn`` ...) into formats, and
:data:`PRECISION_FORMATS` says, as data, which formats a prec precision name computes in.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from prec.errors import ConfigurationError

__all__ = [
    "AMAX_EPS",
    "FORMATS",
    "PRECISION_FORMATS",
    "Format",
    "FormatInput",
    "PrecisionFormats",
    "formats_for_precision",
    "parse_format",
    "parse_formats",
]


#: The smallest amax a per-tensor scale divides by (torchao's ``EPS``).
AMAX_EPS = 1e-12


@dataclass(frozen=True)
class Format:
    """One floating-point format a tensor may be stored or computed in."""

    name: str
    dtype: torch.dtype
    scaled: bool  # used with per-tensor scaling (fp8): overflow cannot happen, underflow is measured after scaling

    @property
    def max(self) -> float:
        """The largest finite value."""
        return float(torch.finfo(self.dtype).max)

    @property
    def smallest_normal(self) -> float:
        """Below this magnitude a value loses mantissa bits (subnormal) or becomes zero."""
        return float(torch.finfo(self.dtype).smallest_normal)

    @property
    def smallest_subnormal(self) -> float:
        """The smallest nonzero magnitude; half of it and below round to zero."""
        return self.smallest_normal * float(torch.finfo(self.dtype).eps)

    @property
    def mantissa_bits(self) -> int:
        """Stored mantissa bits (fp16: 10, bf16: 7, e4m3: 3, e5m2: 2)."""
        return round(-math.log2(float(torch.finfo(self.dtype).eps)))

    @property
    def bits(self) -> int:
        return int(torch.finfo(self.dtype).bits)

    def scale(self, amax: Tensor) -> Tensor:
        """The per-tensor scale of a tensor whose largest magnitude is ``amax`` (1 for an unscaled format); ``amax``
        is clamped below at :data:`AMAX_EPS` as torchao does, so an all-zero tensor gets a finite scale. Stays on
        the device: no synchronisation."""
        if not self.scaled:
            return torch.ones_like(amax)
        return self.max / amax.clamp(min=AMAX_EPS)

    def round(self, tensor: Tensor) -> Tensor:
        """``tensor`` rounded to this format and back to its own dtype, as a kernel in this format would see it.

        fp8 formats are scaled per tensor and saturate at their largest value (as torchao casts); 16-bit formats
        are rounded as a plain cast, so a value out of range becomes inf, exactly as under autocast.
        """
        if not tensor.is_floating_point() or tensor.dtype == self.dtype:
            return tensor
        if not self.scaled and self.dtype.itemsize < 2:  # unscaled fp8: saturate like torchao's casts
            return tensor.clamp(-self.max, self.max).to(self.dtype).to(tensor.dtype)
        if not self.scaled:
            return tensor.to(self.dtype).to(tensor.dtype)
        work = tensor.float()
        scale = self.scale(work.detach().abs().amax())
        rounded = (work * scale).clamp(-self.max, self.max).to(self.dtype).float() / scale
        return rounded.to(tensor.dtype)

    def unscaled(self) -> Format:
        """This format without per-tensor scaling (a plain saturating cast for fp8)."""
        return Format(self.name, self.dtype, scaled=False)


FORMATS: dict[str, Format] = {
    "fp64": Format("fp64", torch.float64, scaled=False),
    "fp32": Format("fp32", torch.float32, scaled=False),
    "fp16": Format("fp16", torch.float16, scaled=False),
    "bf16": Format("bf16", torch.bfloat16, scaled=False),
    "e4m3": Format("e4m3", torch.float8_e4m3fn, scaled=True),
    "e5m2": Format("e5m2", torch.float8_e5m2, scaled=True),
}

_ALIASES: dict[str, str] = {
    "float64": "fp64",
    "double": "fp64",
    "f64": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "single": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "e4m3",
    "float8_e4m3": "e4m3",
    "fp8_e4m3": "e4m3",
    "e4m3fn": "e4m3",
    "float8_e5m2": "e5m2",
    "fp8_e5m2": "e5m2",
}
_BY_DTYPE: dict[torch.dtype, str] = {fmt.dtype: name for name, fmt in FORMATS.items()}

FormatInput = str | torch.dtype | Format


def parse_format(value: FormatInput, *, argument: str = "formats") -> Format:
    """One format from its name, an alias (``"bfloat16"``, ``"float8_e4m3fn"``), a torch dtype or a Format."""
    if isinstance(value, Format):
        return value
    if isinstance(value, torch.dtype) and value in _BY_DTYPE:
        return FORMATS[_BY_DTYPE[value]]
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        key = _ALIASES.get(key, key)
        if key in FORMATS:
            return FORMATS[key]
    accepted = ", ".join(FORMATS)
    message = f"{argument}: {value!r} is not a number format. Accepted: {accepted} (or aliases such as 'float16',"
    message += " 'bfloat16', 'float8_e4m3fn', 'float8_e5m2', or the torch dtypes)."
    if isinstance(value, str):
        match = difflib.get_close_matches(value.lower(), [*FORMATS, *_ALIASES], n=1, cutoff=0.6)
        if match:
            message += f" Did you mean {_ALIASES.get(match[0], match[0])!r}?"
    raise ConfigurationError(message)


def parse_formats(values: Iterable[FormatInput] | FormatInput, *, argument: str = "formats") -> tuple[Format, ...]:
    """Formats from names/dtypes, in order, without duplicates. A single name is accepted as a one-item list."""
    if isinstance(values, (str, torch.dtype, Format)):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ConfigurationError(
            f"{argument} must be a list of format names ({', '.join(FORMATS)}), got {type(values).__name__}."
        ) from None
    if not items:
        raise ConfigurationError(f"{argument} is empty; give at least one of {', '.join(FORMATS)}.")
    parsed: dict[str, Format] = {}
    for item in items:
        fmt = parse_format(item, argument=argument)
        parsed.setdefault(fmt.name, fmt)
    return tuple(parsed.values())


@dataclass(frozen=True)
class PrecisionFormats:
    """What a prec precision computes in: the forward matmuls, the backward (output gradients), the weights."""

    forward: str
    gradients: str
    weights: str
    mixed: bool  # autocast lowers only matmul-like layers; the rest (norms, embeddings) stays in the weights' dtype


#: Each prec precision name and the formats it computes in. fp8 follows torchao's tensorwise recipe: e4m3 for
#: inputs and weights, e5m2 for output gradients, everything outside the fp8 matmuls in bfloat16.
PRECISION_FORMATS: dict[str, PrecisionFormats] = {
    "16-mixed": PrecisionFormats("fp16", "fp16", "fp32", mixed=True),
    "bf16-mixed": PrecisionFormats("bf16", "bf16", "fp32", mixed=True),
    "16-true": PrecisionFormats("fp16", "fp16", "fp16", mixed=False),
    "bf16-true": PrecisionFormats("bf16", "bf16", "bf16", mixed=False),
    "32-true": PrecisionFormats("fp32", "fp32", "fp32", mixed=False),
    "64-true": PrecisionFormats("fp64", "fp64", "fp64", mixed=False),
    "fp8-mixed": PrecisionFormats("e4m3", "e5m2", "fp32", mixed=True),
    "fp8-bf16-true": PrecisionFormats("e4m3", "e5m2", "bf16", mixed=False),
}


def formats_for_precision(precision: str, *, argument: str = "precision") -> PrecisionFormats:
    """The formats of a prec precision name, or a ConfigurationError listing the names known here."""
    if isinstance(precision, str) and precision in PRECISION_FORMATS:
        return PRECISION_FORMATS[precision]
    names = ", ".join(PRECISION_FORMATS)
    message = f"{argument}={precision!r}: the numerics engine knows the formats of {names}."
    if isinstance(precision, str):
        match = difflib.get_close_matches(precision, list(PRECISION_FORMATS), n=1, cutoff=0.5)
        if match:
            message += f" Did you mean {match[0]!r}?"
    raise ConfigurationError(message)
