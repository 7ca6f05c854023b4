"""The global switches that decide whether "float32" math is float32, saved, set and restored together.

torch has two generations of them: the legacy flags (``torch.backends.cuda.matmul.allow_tf32``,
``torch.backends.cudnn.allow_tf32``, ``torch.set_float32_matmul_precision``) and, since torch 2.9, the
``fp32_precision`` settings per backend and operator. Mixing the two makes torch raise when a legacy flag is
read, so on a torch with the new settings only those are written (torch keeps the legacy view in step).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["FP32_PRECISION_SETTINGS", "Float32Flags", "float32_math_settings"]

#: The ``fp32_precision`` settings 32-true controls: (object path under ``torch.backends``, value for full
#: float32, value under the TF32 opt-in). oneDNN (CPU) stays IEEE float32 either way: TF32 is a GPU format.
FP32_PRECISION_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("cuda.matmul", "ieee", "tf32"),
    ("cudnn.conv", "ieee", "tf32"),
    ("cudnn.rnn", "ieee", "tf32"),
    ("mkldnn.matmul", "ieee", "ieee"),
    ("mkldnn.conv", "ieee", "ieee"),
    ("mkldnn.rnn", "ieee", "ieee"),
)


def _backend(path: str) -> Any:
    return operator.attrgetter(path)(torch.backends)


def _new_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def float32_math_settings() -> dict[str, Any]:
    """The current settings, by name (the ``fp32_precision`` ones where torch has them, else the legacy flags)."""
    if _new_api():
        return {f"{path}.fp32_precision": _backend(path).fp32_precision for path, _, _ in FP32_PRECISION_SETTINGS}
    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


class Float32Flags:
    """Set float32 math for a run and put the previous settings back; :meth:`restore` is idempotent."""

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def apply(self, *, tf32: bool) -> None:
        if self._saved is None:
            self._saved = float32_math_settings()
        if _new_api():
            for path, full, opt_in in FP32_PRECISION_SETTINGS:
                _backend(path).fp32_precision = opt_in if tf32 else full
        else:  # pragma: no cover - torch < 2.9
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.set_float32_matmul_precision("high" if tf32 else "highest")

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        if _new_api():
            for path, _, _ in FP32_PRECISION_SETTINGS:
                _backend(path).fp32_precision = saved[f"{path}.fp32_precision"]
        else:  # pragma: no cover - torch < 2.9
            torch.backends.cuda.matmul.allow_tf32 = saved["cuda.matmul.allow_tf32"]
            torch.backends.cudnn.allow_tf32 = saved["cudnn.allow_tf32"]
            torch.set_float32_matmul_precision(saved["float32_matmul_precision"])
