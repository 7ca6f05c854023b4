"""The global switches that decide whether "float32" math is float32, saved, set and restored together.

torch has two generations of them: the legacy flags (``torch.backends.cuda.matmul.allow_tf32``,
``torch.backends.cudnn.allow_tf32``, ``torch.set_float32_matmul_precision``) and, since torch 2.9, the
``fp32_precision`` settings per backend and operator. torch keeps the new settings in step when the legacy
flags are written, but refuses to read a legacy flag once the new ones were written directly. So prec writes
the legacy flags (which sets cuBLAS, cuDNN and oneDNN matmuls), and the new settings only where one is left in a
reduced-precision mode (e.g. a user's ``torch.backends.mkldnn.conv.fp32_precision = "bf16"``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["FP32_PRECISION_SETTINGS", "Float32Flags", "float32_math_settings"]

#: The ``fp32_precision`` settings (paths under ``torch.backends``) that must not stay in a reduced mode.
FP32_PRECISION_SETTINGS: tuple[str, ...] = (
    "cuda.matmul",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
_FULL = ("ieee", "none")
_LEGACY = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "float32_matmul_precision")


def _backend(path: str) -> Any:
    return operator.attrgetter(path)(torch.backends)


def _new_settings() -> dict[str, str]:
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # pragma: no cover - torch < 2.9
        return {}
    return {path: _backend(path).fp32_precision for path in FP32_PRECISION_SETTINGS}


def _legacy_settings() -> dict[str, Any] | None:
    try:
        return {
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    except RuntimeError:  # the new settings were written directly and disagree with each other
        return None


def _set_legacy(matmul_tf32: bool, cudnn_tf32: bool, matmul_precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.set_float32_matmul_precision(matmul_precision)


def float32_math_settings() -> dict[str, Any]:
    """The current settings: the legacy flags (``None`` where torch refuses to read them) and the oneDNN
    convolution/RNN settings the legacy flags do not cover."""
    legacy = _legacy_settings() or dict.fromkeys(_LEGACY)
    new = _new_settings()
    return {**legacy, **{f"{path}.fp32_precision": new[path] for path in ("mkldnn.conv", "mkldnn.rnn") if new}}


class Float32Flags:
    """Set float32 (or TF32) math for a run and put the previous settings back; :meth:`restore` is idempotent."""

    def __init__(self) -> None:
        self._saved: tuple[dict[str, Any] | None, dict[str, str]] | None = None
        self._overwritten: list[str] = []

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def apply(self, *, tf32: bool) -> None:
        if self._saved is None:
            self._saved = (_legacy_settings(), _new_settings())
        _set_legacy(tf32, tf32, "high" if tf32 else "highest")
        for path, value in _new_settings().items():
            if value not in _FULL and not (tf32 and value == "tf32" and not path.startswith("mkldnn")):
                _backend(path).fp32_precision = "ieee"
                self._overwritten.append(path)

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        legacy, new = saved
        if legacy is not None:
            _set_legacy(
                legacy["cuda.matmul.allow_tf32"], legacy["cudnn.allow_tf32"], legacy["float32_matmul_precision"]
            )
        for path in FP32_PRECISION_SETTINGS if legacy is None else self._overwritten:
            _backend(path).fp32_precision = new[path]
        self._overwritten = []
