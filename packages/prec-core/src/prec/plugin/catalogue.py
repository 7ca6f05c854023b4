"""The catalogue of prec's own (first-party) packages: which distribution provides which accelerator and pair,
the accelerator aliases they use, and the pairs they deliberately leave out, with the reason.

Nothing here decides what runs: selection only ever uses what installed plugins registered. The catalogue exists so
a failed lookup can say *what to install* ("`pip install prec-double` adds it") or *why a pair does not exist*
("TPUs have no float64 arithmetic"), and so ``prec list`` can tell a first-party entry from a third-party one. It is
public, so first-party plugins (and third-party ones that want the same wording) read it instead of copying it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Accelerator name -> the first-party distribution that registers it.
ACCELERATOR_PACKAGES: Mapping[str, str] = MappingProxyType({"cpu": "prec-cpu", "cuda": "prec-cuda", "xla": "prec-xla"})
#: Alias -> accelerator name, for the first-party accelerators (each also declares them on its class).
ACCELERATOR_ALIASES: Mapping[str, str] = MappingProxyType({"gpu": "cuda", "tpu": "xla"})
#: Precision name -> the first-party distribution that adds it (names prec-core itself does not know), so
#: ``precision="fp8-mixed"`` without prec-torchao says what to install instead of "not a precision name".
PRECISION_PACKAGES: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(("fp8-mixed", "fp8-bf16-true", "mxfp8-mixed", "int8-mixed"), "prec-torchao"),
        **dict.fromkeys(
            ("bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-fp4-dq", "bnb-int8", "bnb-int8-training"), "prec-bnb"
        ),
        "64-true": "prec-double",
    }
)
#: (precision, accelerator) -> the first-party distribution that registers the pair.
PAIR_PACKAGES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        **{
            (name, accelerator): package
            for name, package in PRECISION_PACKAGES.items()
            if package != "prec-double"
            for accelerator in ("cpu", "cuda")
        },
        **{(name, "cpu"): "prec-cpu" for name in ("bf16-mixed", "16-true", "bf16-true", "32-true")},
        **{(name, "cuda"): "prec-cuda" for name in ("16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true")},
        **{(name, "xla"): "prec-xla" for name in ("bf16-mixed", "16-true", "bf16-true", "32-true")},
        ("64-true", "cpu"): "prec-double",
        ("64-true", "cuda"): "prec-double",
    }
)
#: (precision, accelerator) -> why the first-party packages leave the pair out, and what to use instead.
KNOWN_GAPS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("16-mixed", "cpu"): "16-mixed needs a GPU: CPU fp16 autocast is slow and needs loss scaling."
        " Use precision='bf16-mixed' on CPU",
        ("16-mixed", "xla"): "TPUs compute in bfloat16, not float16. Use precision='bf16-mixed'",
        ("64-true", "xla"): "TPUs have no float64 arithmetic. Use precision='32-true'",
        ("64-true", "mps"): "Apple MPS devices have no float64 arithmetic."
        " Use precision='32-true' or the cpu accelerator",
        ("bnb-int8-training", "cpu"): "bitsandbytes 0.50.2 has no CPU kernel for int8_double_quant, which an"
        " int8-training layer needs outside training mode (validation, inference). Use precision='bnb-int8' (frozen"
        " int8 weights) on cpu, or a CUDA GPU",
    }
)


def known_gap(precision: str, accelerator: str) -> str | None:
    """Why prec's own packages leave ``precision`` on ``accelerator`` out (a sentence without the final period),
    or ``None``. A plugin may still register such a pair; this only explains its absence."""
    return KNOWN_GAPS.get((precision, accelerator.lower()))


def package_for_pair(precision: str, accelerator: str) -> str | None:
    """The first-party distribution that registers the pair, or ``None``."""
    return PAIR_PACKAGES.get((precision, accelerator.lower()))


def package_for_accelerator(accelerator: str) -> str | None:
    """The first-party distribution that registers ``accelerator`` (a name or an alias), or ``None``."""
    name = accelerator.lower()
    return ACCELERATOR_PACKAGES.get(ACCELERATOR_ALIASES.get(name, name))


def package_for_precision(precision: str) -> str | None:
    """The first-party distribution that adds the precision name ``precision`` (on any accelerator), or ``None``."""
    return PRECISION_PACKAGES.get(precision)
