"""prec-double: ``64-true`` (legacy ``64`` and ``"64"``) on the accelerators that compute in float64.

A precision-only plugin: it registers no accelerator, only the pairs ``64-true`` on ``cpu`` and on ``cuda``,
through the same ``prec_register_precisions`` hook any third-party plugin uses. The ``cuda`` pair is registered
whether or not prec-cuda is installed; it is listed by ``prec list`` and used once a ``cuda`` accelerator appears.

TPUs (xla) and Apple MPS have no float64 arithmetic: the registry explains that when ``64-true`` is asked for
there, and :func:`double_precision` refuses them too, should another plugin map ``64-true`` onto such a device.
"""

from __future__ import annotations

from typing import Any

import prec
from prec import Option, check_options
from prec.accelerator import Accelerator
from prec.precision.standard import CONVERT_INPUTS_FROM, KEEP_FLOAT32
from prec_double.precision import (
    DEFAULT_INPUT_DTYPES,
    NAME,
    NO_FLOAT64_DEVICE_TYPES,
    DoublePrecision,
    check_device_type,
    to_double,
)

#: The accelerators this package registers 64-true for.
ACCELERATORS: tuple[str, ...] = ("cpu", "cuda")
DESCRIPTION = "float64 weights and math; complex tensors complex128"
_OPTIONS = (
    CONVERT_INPUTS_FROM,
    Option("output_dtype", "None (keep float64 outputs) or torch.float32"),
    KEEP_FLOAT32,
)


def double_precision(accelerator: Accelerator, **options: Any) -> DoublePrecision:
    """The factory the registry calls when a Trainer or :func:`prec.get_precision` selects 64-true.

    Raises :class:`prec.UnsupportedPrecisionError` for an accelerator whose device (by name or device type) has
    no float64, and :class:`prec.ConfigurationError` for an option 64-true does not have.
    """
    for device_type in (accelerator.name, accelerator.device_type):
        check_device_type(device_type)
    options = check_options(NAME, options, _OPTIONS)
    return DoublePrecision(device_type=accelerator.device_type or accelerator.name, **options)


@prec.hookimpl
def prec_register_precisions(register: prec.RegisterPrecision) -> None:
    for accelerator in ACCELERATORS:
        register(NAME, accelerator, double_precision, description=DESCRIPTION)


__all__ = [
    "ACCELERATORS",
    "DEFAULT_INPUT_DTYPES",
    "DESCRIPTION",
    "NO_FLOAT64_DEVICE_TYPES",
    "DoublePrecision",
    "check_device_type",
    "double_precision",
    "prec_register_precisions",
    "to_double",
]
