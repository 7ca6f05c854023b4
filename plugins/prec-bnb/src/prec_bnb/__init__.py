"""prec-bnb: bitsandbytes quantized fine-tuning, Lightning's ``BitsandbytesPrecision`` modes as precision names.

``bnb-nf4``, ``bnb-nf4-dq``, ``bnb-fp4``, ``bnb-fp4-dq``, ``bnb-int8``, ``bnb-int8-training``: the Linear layers are
frozen and stored quantized, every other parameter (adapters, heads, norms, biases, and the Linear layers named in
``ignore_modules``) stays float32 and trainable, and the steps autocast to ``compute_dtype``::

    prec.Trainer(precision="bnb-nf4", precision_options={"compute_dtype": "bf16", "ignore_modules": ["head"]})

Registering imports neither bitsandbytes nor CUDA. Without a usable bitsandbytes the names are still registered,
their description says why they cannot run and what to install, and selecting one raises
:class:`prec.UnsupportedPrecisionError` with the reason; :func:`unavailable_reason` says it without a Trainer.
"""

from __future__ import annotations

from prec import RegisterPrecision, hookimpl
from prec_bnb.availability import bitsandbytes_version, load_bitsandbytes, unavailable_reason
from prec_bnb.factories import NAMES, OPTIONS, UNSUPPORTED, factory
from prec_bnb.layers import MODES, layer_classes
from prec_bnb.precision import COMPUTE_DTYPES, BitsandbytesPrecision, QuantizationReport

__all__ = [
    "COMPUTE_DTYPES",
    "MODES",
    "NAMES",
    "OPTIONS",
    "UNSUPPORTED",
    "BitsandbytesPrecision",
    "QuantizationReport",
    "bitsandbytes_version",
    "factory",
    "layer_classes",
    "load_bitsandbytes",
    "prec_register_precisions",
    "unavailable_reason",
]

_WHAT = {
    "nf4": "4-bit NormalFloat",
    "nf4-dq": "4-bit NormalFloat, double-quantized scales",
    "fp4": "4-bit float",
    "fp4-dq": "4-bit float, double-quantized scales",
    "int8": "LLM.int8() int8",
    "int8-training": "int8 matmuls over trainable float16",
}


@hookimpl
def prec_register_precisions(register: RegisterPrecision) -> None:
    reason = unavailable_reason()
    for name, mode in zip(NAMES, MODES, strict=True):
        for accelerator in ("cpu", "cuda"):
            if (name, accelerator) in UNSUPPORTED:
                continue
            if reason is not None:
                description = f"unavailable: {reason}"
            else:
                description = f"frozen {_WHAT[mode]} Linear weights via bitsandbytes; float32 trainable parameters"
            register(name, accelerator, factory(name), description=description)
