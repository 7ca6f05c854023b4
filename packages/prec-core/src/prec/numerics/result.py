"""The result of one recorded step: device tensors until read, then flat keys, a nested dict, offenders.

Keys of :meth:`NumericsResult.scalars` (``{module}`` is the qualified name from ``named_modules()``, ``(root)``
for the model itself; ``{kind}`` one of activations, gradients, weights, updates; ``{format}`` a format name)::

    numerics/{module}/{kind}/amax
    numerics/{module}/{kind}/{format}/underflow
    numerics/{module}/{kind}/{format}/overflow
    numerics/{module}/weights/lost_update
    numerics/{module}/{parameter}/lost_update

``lost_update`` (0..1) is the module's parameters together, ``{parameter}/lost_update`` each of them (``weight``,
``bias``, ``in_proj_weight`` ...): a LayerNorm's gain may stall while its bias, near zero, still moves.

Reading (:meth:`~NumericsResult.scalars`, :meth:`~NumericsResult.to_dict`, :meth:`~NumericsResult.top_offenders`)
synchronises once: every statistic is concatenated into one tensor and copied to the host in one transfer; later
reads use that copy. :meth:`~NumericsResult.histograms` is a second, separate transfer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from prec.errors import ConfigurationError
from prec.numerics.formats import Format
from prec.numerics.stats import HISTOGRAM_BINS, HISTOGRAM_RANGE, fractions, width
from prec.numerics.updates import lost_update_ratio

__all__ = ["ROOT", "NumericsResult", "Offender", "format_table", "key_name"]

#: How the model itself (qualified name ``""``) appears in keys and tables.
ROOT = "(root)"
#: Offenders sort by what they are first (an overflow is an inf, a lost update a stalled layer, an underflow lost
#: digits), then by value.
_SEVERITY = {"overflow": 3, "lost_update": 2, "underflow": 1}


def key_name(module: str) -> str:
    return module or ROOT


class Offender(NamedTuple):
    """One bad number: which module, which tensor kind, which format, what happened (overflow/underflow/
    lost_update), and the fraction (0..1)."""

    module: str
    kind: str
    format: str
    what: str
    value: float


class NumericsResult:
    """One step's statistics (see the module documentation for the keys)."""

    def __init__(
        self,
        formats: Sequence[Format],
        counts: Mapping[tuple[str, str], Tensor],
        products: Mapping[tuple[str, str], Tensor],
        histograms: Mapping[tuple[str, str], Tensor] | None,
    ) -> None:
        self.formats = tuple(formats)
        self.counts = dict(counts)
        self.products = dict(products)
        self.histogram_counts = None if histograms is None else dict(histograms)
        self._host: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{module: {kind: {"amax": a, fmt: {"underflow": u, "overflow": o}}, "lost_update": r,
        "lost_update_by_parameter": {name: r}}}``, synchronising once on first use."""
        if self._host is None:
            self._host = self._read()
        return self._host

    def scalars(self) -> dict[str, float]:
        """The flat keys (``numerics/...``) as floats, for a logger."""
        flat: dict[str, float] = {}
        for module, kinds in self.to_dict().items():
            prefix = f"numerics/{key_name(module)}"
            for kind, stats in kinds.items():
                if kind == "lost_update":
                    flat[f"{prefix}/weights/lost_update"] = stats
                    continue
                if kind == "lost_update_by_parameter":
                    flat.update({f"{prefix}/{name}/lost_update": ratio for name, ratio in stats.items()})
                    continue
                for stat, value in stats.items():
                    if isinstance(value, dict):
                        for what, fraction in value.items():
                            flat[f"{prefix}/{kind}/{stat}/{what}"] = fraction
                    else:
                        flat[f"{prefix}/{kind}/{stat}"] = value
        return flat

    def histograms(self) -> dict[str, Tensor]:
        """``{"numerics/{module}/{kind}": counts}``: per binade of magnitude, ``HISTOGRAM_BINS`` bins from
        ``2**HISTOGRAM_RANGE[0]``; on the host. For TensorBoard: ``writer.add_histogram_raw`` with the
        :meth:`histogram_edges`, or ``add_histogram`` of :meth:`histogram_values`."""
        if self.histogram_counts is None:
            raise ConfigurationError("histograms were not recorded: create the recorder with histograms=True.")
        keys = list(self.histogram_counts)
        if not keys:
            return {}
        stacked = torch.stack([self.histogram_counts[key].float() for key in keys]).cpu()
        return {f"numerics/{key_name(m)}/{k}": row for (m, k), row in zip(keys, stacked, strict=True)}

    @staticmethod
    def histogram_edges() -> Tensor:
        """The ``HISTOGRAM_BINS + 1`` bin edges of :meth:`histograms`, as log2 of the magnitude."""
        return torch.linspace(HISTOGRAM_RANGE[0], HISTOGRAM_RANGE[1], HISTOGRAM_BINS + 1)

    def histogram_values(self, key: str) -> Tensor:
        """One histogram as sample values (each bin's centre repeated by its count), for ``add_histogram``."""
        counts = self.histograms()[key]
        centres = self.histogram_edges()[:-1] + 0.5
        return torch.repeat_interleave(centres, counts.round().long())

    def top_offenders(self, n: int = 10) -> list[Offender]:
        """The ``n`` worst nonzero fractions: overflows first, then lost updates, then underflows, each by value."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigurationError(f"n must be a positive int, got {n!r}.")
        rows: list[Offender] = []
        for module, kinds in self.to_dict().items():
            for kind, stats in kinds.items():
                if kind == "lost_update_by_parameter":
                    rows += [
                        Offender(key_name(module), name, "-", "lost_update", ratio)
                        for name, ratio in stats.items()
                        if ratio > 0
                    ]
                    continue
                if kind == "lost_update":
                    continue
                for fmt, value in stats.items():
                    if isinstance(value, dict):
                        rows += [
                            Offender(key_name(module), kind, fmt, what, fraction)
                            for what, fraction in value.items()
                            if fraction > 0
                        ]
        rows.sort(key=lambda row: (_SEVERITY[row.what], row.value), reverse=True)
        return rows[:n]

    def _read(self) -> dict[str, Any]:
        count_keys = list(self.counts)
        product_keys = list(self.products)
        parts = [self.counts[key] for key in count_keys] + [self.products[key] for key in product_keys]
        if not parts:
            return {}
        device = parts[0].device
        host = torch.cat([part.to(device=device, dtype=torch.float64) for part in parts]).cpu().tolist()
        size = width(self.formats)
        result: dict[str, Any] = {}
        for index, (module, kind) in enumerate(count_keys):
            values = host[index * size : (index + 1) * size]
            result.setdefault(module, {})[kind] = fractions(values, self.formats)
        offset = len(count_keys) * size
        sums: dict[str, list[float]] = {}
        for index, (module, param_name) in enumerate(product_keys):
            dot, norm = host[offset + 2 * index : offset + 2 * index + 2]
            by_parameter = result.setdefault(module, {}).setdefault("lost_update_by_parameter", {})
            by_parameter[param_name] = lost_update_ratio((dot, norm))
            total = sums.setdefault(module, [0.0, 0.0])
            total[0] += dot
            total[1] += norm
        for module, (dot, norm) in sums.items():
            result[module]["lost_update"] = lost_update_ratio((dot, norm))
        return result


def format_table(rows: Sequence[Offender], width: int = 80) -> str:
    """Offender rows as a text table no wider than ``width`` (long module names are shortened from the left)."""
    fixed = (("kind", 11), ("format", 6), ("what", 11), ("value", 8))
    room = width - sum(size for _, size in fixed) - len(fixed)
    if not isinstance(width, int) or room < 12:
        minimum = sum(size for _, size in fixed) + len(fixed) + 12
        raise ConfigurationError(f"width must be an int of at least {minimum}, got {width!r}.")

    def module_cell(name: str) -> str:
        return name if len(name) <= room else "..." + name[len(name) - room + 3 :]

    lines = [" ".join([f"{'module':<{room}}", *(f"{title:<{size}}" for title, size in fixed[:-1]), "   value"])]
    lines.append("-" * len(lines[0]))
    for row in rows:
        value = f"{100 * row.value:7.2f}%"
        texts = (row.kind, row.format, row.what)
        cells = [f"{module_cell(row.module):<{room}}"]
        cells += [f"{text[:size]:<{size}}" for text, (_, size) in zip(texts, fixed, strict=False)]
        lines.append(" ".join([*cells, f"{value:>8}"]))
    if not rows:
        lines.append("(nothing under- or overflows, no update was lost)")
    return "\n".join(line.rstrip() for line in lines)
