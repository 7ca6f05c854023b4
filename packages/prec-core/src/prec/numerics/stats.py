"""What one tensor looks like in each target format, computed on its device without synchronising.

:func:`tensor_counts` returns one float64 vector per tensor, laid out as::

    [amax, nonzero, underflow(f1), overflow(f1), underflow(f2), overflow(f2), ...]

where the underflow and overflow entries are *counts*. Vectors of several calls are combined with
:func:`combine` (max of amax, sum of counts) and turned into fractions only when the host reads them
(:func:`fractions`), so a step's telemetry costs one transfer in the end.

* **underflow**: nonzero values whose magnitude lies below the format's smallest normal: they flush to zero or
  become subnormal and lose mantissa bits. For a scaled format (fp8) the magnitude is taken *after* the tensor's
  own per-tensor scale ``fmt.max / amax``, as torchao casts it.
* **overflow**: values whose magnitude exceeds the format's largest finite value (they become inf under a cast).
  For a scaled format it is 0 by construction: the scale maps amax onto the largest value.

Both are fractions of the tensor's *nonzero* values: zeros are exact in every format and say nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prec.numerics.formats import Format

__all__ = ["HISTOGRAM_BINS", "HISTOGRAM_RANGE", "combine", "fractions", "log2_histogram", "tensor_counts", "width"]

#: The log2-magnitude histogram: one bin per binade from 2**-150 (below float32's smallest subnormal) to 2**128.
HISTOGRAM_RANGE = (-150.0, 128.0)
HISTOGRAM_BINS = int(HISTOGRAM_RANGE[1] - HISTOGRAM_RANGE[0])


def width(formats: Sequence[Format]) -> int:
    """The length of a counts vector for ``formats``."""
    return 2 + 2 * len(formats)


def tensor_counts(tensor: Tensor, formats: Sequence[Format]) -> Tensor:
    """``[amax, nonzero, (underflow, overflow) per format]`` of ``tensor``, as a float64 vector on its device."""
    magnitude = tensor.detach().abs()
    if magnitude.dtype not in (torch.float32, torch.float64):
        magnitude = magnitude.float()
    if magnitude.numel() == 0:
        return torch.zeros(width(formats), dtype=torch.float64, device=tensor.device)
    amax = magnitude.amax()
    zeros = magnitude.numel() - torch.count_nonzero(magnitude)  # zeros lie below every threshold: taken out
    counts = [magnitude.numel() - zeros]
    for fmt in formats:
        if fmt.scaled:
            threshold = fmt.smallest_normal / fmt.scale(amax)  # |x| * scale < smallest_normal
            counts += [torch.count_nonzero(magnitude < threshold) - zeros, torch.zeros_like(zeros)]
        else:
            counts.append(torch.count_nonzero(magnitude < fmt.smallest_normal) - zeros)
            counts.append(torch.count_nonzero(magnitude > fmt.max))
    return torch.cat([amax.to(torch.float64).reshape(1), torch.stack(counts).to(torch.float64)])


def combine(total: Tensor | None, counts: Tensor) -> Tensor:
    """Counts of two calls as one: the larger amax, the sum of every count."""
    if total is None:
        return counts
    return torch.cat([torch.maximum(total[:1], counts[:1]), total[1:] + counts[1:]])


def fractions(counts: Sequence[float], formats: Sequence[Format]) -> dict[str, float | dict[str, float]]:
    """Host-side view of a counts vector: ``{"amax": ..., fmt: {"underflow": f, "overflow": f}}``."""
    denominator = max(counts[1], 1.0)
    result: dict[str, float | dict[str, float]] = {"amax": float(counts[0])}
    for index, fmt in enumerate(formats):
        result[fmt.name] = {
            "underflow": counts[2 + 2 * index] / denominator,
            "overflow": counts[3 + 2 * index] / denominator,
        }
    return result


def log2_histogram(tensor: Tensor) -> Tensor:
    """Counts of the nonzero values per binade of magnitude (``HISTOGRAM_BINS`` bins over ``HISTOGRAM_RANGE``).

    Values outside the range land in the end bins; zeros and non-finite values are not counted."""
    magnitude = tensor.detach().abs().float().flatten()
    exponent = torch.log2(magnitude).clamp(HISTOGRAM_RANGE[0], HISTOGRAM_RANGE[1] - 0.5)
    exponent = torch.where(torch.isfinite(magnitude) & (magnitude != 0), exponent, torch.nan)
    return torch.histc(exponent, bins=HISTOGRAM_BINS, min=HISTOGRAM_RANGE[0], max=HISTOGRAM_RANGE[1])
