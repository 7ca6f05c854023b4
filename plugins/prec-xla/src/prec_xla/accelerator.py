"""The ``xla`` accelerator (alias ``tpu``). Only :meth:`XLAAccelerator.get_device` imports torch_xla."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import ClassVar

import torch

from prec.accelerator import Accelerator, Availability
from prec.errors import AcceleratorUnavailableError
from prec_xla import detect

HINT = detect.INSTALL_HINT


def import_torch_xla() -> ModuleType:
    """Import torch_xla on first real use; turn a failed import into an error that says how to fix it.

    Availability is checked first, so a torch / torch_xla mismatch is reported from metadata before the import
    could crash on it.
    """
    availability = detect.probe()
    if not availability:
        raise AcceleratorUnavailableError(f"the xla accelerator is not available: {availability.reason}. {HINT}")
    try:
        return importlib.import_module("torch_xla")
    except (ImportError, OSError) as error:  # a broken native library, missing shared objects
        message = f"torch_xla failed to import ({type(error).__name__}: {error}). {HINT}"
        raise AcceleratorUnavailableError(message) from error


class XLAAccelerator(Accelerator):
    """XLA devices through torch_xla: TPUs, or the host CPU with ``PJRT_DEVICE=CPU`` (tests, development).

    ``accelerator="auto"`` prefers it over CUDA and the CPU whenever it is available, that is on a TPU or when
    ``PJRT_DEVICE`` names a backend explicitly.
    """

    name = "xla"
    aliases = ("tpu",)
    device_type = "xla"
    auto_priority = 20
    install_hint = HINT
    #: The strategy a one-process run should use here: ``single`` plus state dicts of CPU tensors.
    single_device_strategy: ClassVar[str] = "single_xla"

    def availability(self) -> Availability:
        return detect.probe()

    def device_count(self) -> int:
        return detect.device_count() if detect.probe() else 0

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        """TPUs compute in bfloat16 and float32; float64 does not exist there and float16 is emulated."""
        return dtype in (torch.bfloat16, torch.float32)

    def auto_precision(self) -> tuple[str, str]:
        if detect.backend() == "TPU":
            return "bf16-mixed", "TPUs compute bfloat16 natively; bf16-mixed keeps float32 weights"
        return "32-true", "the XLA CPU backend gains nothing from 16-bit math"

    def get_device(self, index: int = 0) -> torch.device:
        torch_xla = import_torch_xla()
        return torch_xla.device(index)

    def setup_device(self, device: torch.device) -> None:
        import_torch_xla()

    def teardown(self) -> None:
        """Run whatever is still pending in the lazy graph, so no work is silently dropped at the end."""
        torch_xla = sys.modules.get("torch_xla")
        if torch_xla is not None:
            torch_xla.sync()
