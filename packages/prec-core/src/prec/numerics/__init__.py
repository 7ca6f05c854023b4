"""Seeing your numerics: which precision, and which layers, a model can take.

Three tools, each usable from a loop of your own, and the building blocks for the Trainer's callback and the
``prec plan`` command:

**Telemetry of a step** (:class:`NumericsRecorder`): per layer and tensor kind, amax and the fraction of values
that under- or overflow in each target format, and the lost-update ratio of 16-bit weights. ``start()`` installs
hooks for one step, ``before_optimizer_step(optimizer)`` / ``after_optimizer_step()`` bracket the optimizer step,
``stop()`` removes every hook and returns a :class:`NumericsResult` whose tensors stay on the device until
``scalars()`` / ``to_dict()`` read them in one transfer. A callback calls these from its batch-start,
before-optimizer-step and batch-end hooks on the steps it samples, and logs ``scalars()``.

**A measured plan** (:func:`measure`, :func:`make_plan`): a few float32 steps on a copy of the model, every layer
emulated alone in every candidate format, then per precision the modules to keep in float32, to leave out of fp8,
and whether ``master_weights`` is needed, each with its reason. :class:`Plan` is versioned JSON
(``to_json``/``from_json``/``load``/``save``); ``plan.precision_options()`` is the Trainer's
``precision_options``.

**A drift check** (:func:`gradient_drift`, :func:`judge`): one micro-batch's gradients recomputed in float32 or
float64 from the same weights, compared per layer (relative error, cosine) with the low-precision ones.

Formats are named (:func:`parse_formats`: fp64, fp32, fp16, bf16, e4m3, e5m2 and aliases), and
:data:`PRECISION_FORMATS` maps prec's precision names to the formats they compute in. The keys, the statistics and
the plan's schema are described in ``docs/numerics.md``.
"""

from __future__ import annotations

from prec.numerics.drift import MAX_LOSS_GAP, MIN_COSINE, DriftReport, DriftVerdict, LayerDrift, gradient_drift, judge
from prec.numerics.formats import (
    FORMATS,
    PRECISION_FORMATS,
    Format,
    PrecisionFormats,
    formats_for_precision,
    parse_format,
    parse_formats,
)
from prec.numerics.measure import LayerMeasurement, Measurements, measure
from prec.numerics.plan import SCHEMA_VERSION, Decision, MasterWeightsDecision, Plan
from prec.numerics.planner import Thresholds, make_plan
from prec.numerics.plot import plot_heatmap
from prec.numerics.recorder import DEFAULT_FORMATS, DEFAULT_MODULE_TYPES, KINDS, NumericsRecorder, default_filter
from prec.numerics.result import NumericsResult, Offender, format_table
from prec.numerics.updates import intended_updates, lost_update_ratio

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MODULE_TYPES",
    "FORMATS",
    "KINDS",
    "MAX_LOSS_GAP",
    "MIN_COSINE",
    "PRECISION_FORMATS",
    "SCHEMA_VERSION",
    "Decision",
    "DriftReport",
    "DriftVerdict",
    "Format",
    "LayerDrift",
    "LayerMeasurement",
    "MasterWeightsDecision",
    "Measurements",
    "NumericsRecorder",
    "NumericsResult",
    "Offender",
    "Plan",
    "PrecisionFormats",
    "Thresholds",
    "default_filter",
    "format_table",
    "formats_for_precision",
    "gradient_drift",
    "intended_updates",
    "judge",
    "lost_update_ratio",
    "make_plan",
    "measure",
    "parse_format",
    "parse_formats",
    "plot_heatmap",
]
