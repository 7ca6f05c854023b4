"""A heatmap of the measured output error, layer x format (needs matplotlib, an optional dependency)."""

from __future__ import annotations

import math
from pathlib import Path

from prec.errors import ConfigurationError
from prec.numerics.measure import Measurements

__all__ = ["plot_heatmap"]


def plot_heatmap(measurements: Measurements, path: str | Path, *, what: str = "forward_error") -> Path:
    """Write a PNG (or any format matplotlib infers from ``path``) of log10 of ``what`` per layer and format.

    Infinite errors (an overflow) are drawn at the top of the colour scale and marked ``inf``."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "plot_heatmap needs matplotlib, which is not installed: pip install matplotlib"
        ) from None
    if what not in ("forward_error", "backward_error"):
        raise ConfigurationError(f"what={what!r}: accepted are 'forward_error' and 'backward_error'.")
    names = list(measurements.layers)
    formats = list(measurements.formats)
    grid: list[list[float]] = []
    for name in names:
        errors = getattr(measurements.layers[name], what)
        row = []
        for fmt in formats:
            value = errors.get(fmt)
            row.append(math.nan if value is None else (1.0 if math.isinf(value) else math.log10(max(value, 1e-12))))
        grid.append(row)
    figure, axes = plt.subplots(figsize=(1.2 * len(formats) + 3, 0.35 * len(names) + 1.5))
    image = axes.imshow(grid, aspect="auto", cmap="viridis", vmin=-6, vmax=1)
    axes.set_xticks(range(len(formats)), formats)
    axes.set_yticks(range(len(names)), [name or "(root)" for name in names])
    for y, name in enumerate(names):
        for x, fmt in enumerate(formats):
            value = getattr(measurements.layers[name], what).get(fmt)
            if value is not None and math.isinf(value):
                axes.text(x, y, "inf", ha="center", va="center", color="white")
    figure.colorbar(image, ax=axes, label=f"log10 relative {what.replace('_', ' ')}")
    axes.set_title(f"{what.replace('_', ' ')} per layer and format")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target)
    plt.close(figure)
    return target
