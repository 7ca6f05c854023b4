"""prec-cpu: the CPU accelerator and the precisions that run on it.

Registers ``cpu`` and, on it, ``32-true``, ``bf16-mixed`` (autocast to bfloat16), ``bf16-true`` and ``16-true``.
``16-mixed`` is deliberately absent: float16 autocast on CPU is slow and needs loss scaling; bf16-mixed is the
CPU mixed precision. ``64-true`` comes from ``prec-double``.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import Any

import torch

import prec
from prec import warn
from prec.accelerator import Accelerator, Availability
from prec.errors import PerformanceWarning
from prec.precision import Precision
from prec.precision.standard import build_float32, build_mixed, build_true


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = {
                flag
                for line in cpuinfo
                if line.startswith(("flags", "Features"))
                for flag in line.split(":", 1)[1].split()
            }
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=2, check=False
            )
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


class CPUAccelerator(Accelerator):
    """The host CPU. Always available; ``devices=N`` means N processes under a distributed strategy."""

    name = "cpu"
    device_type = "cpu"
    auto_priority = 0
    install_hint = "`pip install prec-cpu`"

    def availability(self) -> Availability:
        return Availability(True)

    def device_count(self) -> int:
        return os.cpu_count() or 1

    def get_device(self, index: int = 0) -> torch.device:
        return torch.device("cpu")

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        if dtype == torch.bfloat16:
            return native_bf16()
        return dtype != torch.float16

    def auto_precision(self) -> tuple[str, str]:
        if native_bf16():
            return "bf16-mixed", "this CPU computes bfloat16 natively; bf16-mixed keeps float32 weights"
        return "32-true", "this CPU has no native bfloat16, where 16-bit math is slower than float32"


def _warn_if_slow(name: str) -> None:
    if not native_bf16():
        warn(
            f"precision={name!r} on a CPU without native bfloat16 (no AVX512-BF16/AMX/Arm BF16) emulates bf16 and"
            " usually runs slower than 32-true. It works; choose it for memory, not speed.",
            PerformanceWarning,
        )


_NO_SCALER = " (bf16-mixed has no grad scaler: bfloat16 has float32's range)"


def bf16_mixed(accelerator: Accelerator, **options: Any) -> Precision:
    precision = build_mixed("bf16-mixed", "cpu", torch.bfloat16, options, scaler=False, note=_NO_SCALER)
    _warn_if_slow("bf16-mixed")
    return precision


def bf16_true(accelerator: Accelerator, **options: Any) -> Precision:
    precision = build_true("bf16-true", torch.bfloat16, "cpu", options)
    _warn_if_slow("bf16-true")
    return precision


def half_true(accelerator: Accelerator, **options: Any) -> Precision:
    return build_true("16-true", torch.float16, "cpu", options)


def full(accelerator: Accelerator, **options: Any) -> Precision:
    return build_float32(options)


FLOAT32_DESCRIPTION = "float32 weights and math (TF32 off; opt in with precision_options={'tf32': True})"
KEEP_UPDATES = "; master_weights='fp32'|'kahan'|'stochastic' keeps small updates"


@prec.hookimpl
def prec_register_accelerators(register: prec.RegisterAccelerator) -> None:
    register(CPUAccelerator)


@prec.hookimpl
def prec_register_precisions(register: prec.RegisterPrecision) -> None:
    register("32-true", "cpu", full, description=FLOAT32_DESCRIPTION)
    register("bf16-mixed", "cpu", bf16_mixed, description="float32 weights, bfloat16 autocast")
    register("bf16-true", "cpu", bf16_true, description="bfloat16 weights and math" + KEEP_UPDATES)
    register("16-true", "cpu", half_true, description="float16 weights and math; master_weights='fp32' keeps updates")
