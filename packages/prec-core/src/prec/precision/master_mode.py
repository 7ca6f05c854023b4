"""The value of the ``master_weights`` option, parsed once into what it means.

Code asks a mode what it does (``keeps_float32_copy``, ``compensates``, ...) instead of comparing spellings, so
a new mode is one new member here. A member is a ``str``: it equals its spelling (``MasterWeights.KAHAN ==
"kahan"``), so code and checkpoints that hold the spelling keep working.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from prec.errors import ConfigurationError

__all__ = ["MASTER_WEIGHT_MODES", "MasterWeights"]


class MasterWeights(str, Enum):
    """How bf16-true / 16-true keep the updates that 16-bit weights drop (``None`` is plain 16-bit weights)."""

    FP32 = "fp32"
    KAHAN = "kahan"
    STOCHASTIC = "stochastic"

    @property
    def keeps_float32_copy(self) -> bool:
        """The optimizer steps persistent float32 copies (and keeps its state in float32)."""
        return self is MasterWeights.FP32

    @property
    def compensates(self) -> bool:
        """A bfloat16 buffer carries what rounding the new weight to nearest dropped (Kahan summation)."""
        return self is MasterWeights.KAHAN

    @property
    def rounds_stochastically(self) -> bool:
        """Weights and optimizer state stay 16-bit; each step runs on float32 working copies and rounds the
        results back stochastically (the weights too, unless compensated)."""
        return self is not MasterWeights.FP32

    @property
    def bytes_per_param(self) -> int:
        """Persistent bytes per 16-bit parameter beside the weight, gradient and optimizer state."""
        return {MasterWeights.FP32: 4, MasterWeights.KAHAN: 2, MasterWeights.STOCHASTIC: 0}[self]

    @property
    def weight_dtypes(self) -> tuple[torch.dtype, ...]:
        """The 16-bit weights the mode works with: its unbiased rounding is bfloat16's."""
        return (torch.bfloat16, torch.float16) if self.keeps_float32_copy else (torch.bfloat16,)

    @classmethod
    def spellings(cls) -> tuple[str, ...]:
        """The accepted values of the option besides ``None``."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: Any, *, owner: str = "master_weights") -> MasterWeights | None:
        """``value`` as a mode (``None`` stays ``None``); anything else raises naming what is accepted."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls.spellings():
            return cls(value)
        raise ConfigurationError(
            f"{owner}: master_weights={value!r} is not valid; use None (plain 16-bit weights) or one of"
            f" {', '.join(map(repr, cls.spellings()))}."
        )

    def check_dtype(self, dtype: torch.dtype, *, owner: str) -> None:
        """Refuse 16-bit weights of a dtype this mode cannot round (float16 under the cheap modes)."""
        if dtype not in self.weight_dtypes:
            raise ConfigurationError(
                f"{owner}: master_weights={self.value!r} needs bfloat16 weights (its unbiased rounding of weights"
                " and optimizer state is bfloat16's); use master_weights='fp32'."
            )

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: The values of the ``master_weights`` option (``None`` is plain 16-bit weights).
MASTER_WEIGHT_MODES: tuple[str, ...] = MasterWeights.spellings()
