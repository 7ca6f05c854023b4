"""The factories the registry calls: options checked, device checked, bitsandbytes imported, at selection time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from prec import Option, check_options
from prec.errors import ConfigurationError, UnsupportedPrecisionError
from prec_bnb.availability import load_bitsandbytes, unavailable_reason
from prec_bnb.layers import MODES
from prec_bnb.precision import COMPUTE_DTYPES, BitsandbytesPrecision

if TYPE_CHECKING:
    from prec import Accelerator

PREFIX = "bnb-"
NAMES = tuple(PREFIX + mode for mode in MODES)
#: Pairs prec-bnb does not register: bitsandbytes 0.50.2 lacks a kernel they need there (prec's catalogue of
#: known gaps says why when one is asked for, so the registry never lists a pair that cannot run).
UNSUPPORTED: frozenset[tuple[str, str]] = frozenset({("bnb-int8-training", "cpu")})


def _is_patterns(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(item, str) and item for item in value)


OPTIONS = (
    Option("compute_dtype", f"one of {', '.join(map(repr, COMPUTE_DTYPES))}", lambda value: value in COMPUTE_DTYPES),
    Option(
        "ignore_modules",
        "a list of module names whose Linear layers stay float32 and trainable (a name covers its submodules)",
        _is_patterns,
        (),
    ),
)


def _compute_dtype(name: str, accelerator: Accelerator, requested: str | None) -> torch.dtype:
    int8 = name.startswith("bnb-int8")
    if accelerator.name == "cuda" and int8:
        if requested not in (None, "fp16"):
            raise ConfigurationError(
                f"precision_options for {name}: compute_dtype={requested!r} must be 'fp16' on cuda: bitsandbytes'"
                " LLM.int8() matmul casts its inputs to float16."
            )
        return torch.float16
    if requested is None:
        if accelerator.name == "cuda" and not accelerator.supports_dtype(torch.bfloat16):
            return torch.float16
        return torch.bfloat16
    dtype = COMPUTE_DTYPES[requested]
    if dtype == torch.bfloat16 and accelerator.name == "cuda" and not accelerator.supports_dtype(torch.bfloat16):
        raise UnsupportedPrecisionError(
            f"precision_options for {name}: compute_dtype='bf16' needs a GPU with bfloat16 (compute capability 8.0+);"
            " use compute_dtype='fp16'."
        )
    return dtype


def factory(name: str) -> Callable[..., BitsandbytesPrecision]:
    """The registry's factory for ``name`` (``bnb-<mode>``) on any accelerator."""
    mode = name.removeprefix(PREFIX)

    def make(accelerator: Accelerator, **options: Any) -> BitsandbytesPrecision:
        reason = unavailable_reason()
        if reason is not None:
            raise UnsupportedPrecisionError(f"precision={name!r} comes from prec-bnb, which cannot run here: {reason}.")
        checked = check_options(name, options, OPTIONS)
        dtype = _compute_dtype(name, accelerator, checked.get("compute_dtype"))
        bnb = load_bitsandbytes()
        device_type = accelerator.device_type or accelerator.name
        ignore = tuple(dict.fromkeys(sorted(checked["ignore_modules"])))
        return BitsandbytesPrecision(name, device_type, mode, bnb, compute_dtype=dtype, ignore_modules=ignore)

    make.__name__ = make.__qualname__ = name.replace("-", "_")
    make.__doc__ = f"{name}: frozen bitsandbytes {mode} Linear weights, float32 trainable parameters."
    return make
