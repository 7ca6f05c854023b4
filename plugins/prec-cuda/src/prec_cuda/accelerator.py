"""The CUDA accelerator: availability and device count without creating a CUDA context.

``prec list`` and ``accelerator="auto"`` ask every installed accelerator whether it runs here. For CUDA that must
not create a context (slow, and a forked DataLoader worker or DDP child could no longer use the GPU), so the probe
uses ``torch.cuda.device_count()``, which counts devices through NVML. Everything that needs the device itself
(bfloat16 support, the device name) runs only once a precision is selected.
"""

from __future__ import annotations

import os
import warnings

import torch

from prec.accelerator import Accelerator, Availability

INSTALL_HINT = (
    "prec-cuda needs a CUDA build of torch (https://pytorch.org/get-started/locally/), an NVIDIA driver and a GPU."
)


def cuda_probe() -> tuple[int, str]:
    """The number of visible CUDA devices and, when it is 0, why. Creates no CUDA context."""
    if not torch.backends.cuda.is_built():
        return 0, f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            count = torch.cuda.device_count()
        except Exception as error:  # noqa: BLE001 - a broken driver is a reason, not a crash
            return 0, f"the CUDA driver failed: {type(error).__name__}: {error}"
    if count > 0:
        return count, ""
    if visible is not None and visible.strip() in ("", "-1"):
        return 0, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    # torch reports driver problems (too old, not loaded, no device) as a warning and returns 0.
    driver = " ".join(str(warning.message).strip() for warning in caught if "cuda" in str(warning.message).lower())
    if driver:
        return 0, f"no usable CUDA device (driver error: {driver})"
    return 0, "no CUDA device found (torch.cuda.device_count() is 0)"


class CUDAAccelerator(Accelerator):
    """NVIDIA (and ROCm) GPUs through torch's ``cuda`` device type. ``accelerator="auto"`` prefers it to the CPU."""

    name = "cuda"
    aliases = ("gpu",)
    device_type = "cuda"
    auto_priority = 10
    install_hint = INSTALL_HINT

    def availability(self) -> Availability:
        count, reason = cuda_probe()
        return Availability(True) if count > 0 else Availability(False, reason)

    def device_count(self) -> int:
        return cuda_probe()[0]

    # -- device capabilities: these initialise CUDA, so they run at selection time, never in prec list ----
    def bf16_supported(self) -> bool:
        """Whether the current GPU computes bfloat16 natively (Ampere or newer; emulation does not count)."""
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))

    def device_description(self) -> str:
        """Name and compute capability of the current GPU, for error messages."""
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        if dtype == torch.bfloat16:
            return self.bf16_supported()
        return dtype in (torch.float16, torch.float32, torch.float64)

    def auto_precision(self) -> tuple[str, str]:
        if self.bf16_supported():
            return "bf16-mixed", "this GPU computes bfloat16 natively; bf16-mixed needs no loss scaling"
        return "16-mixed", "this GPU has no native bfloat16; 16-mixed uses float16 tensor cores with a grad scaler"

    # -- lifecycle ------------------------------------------------------------------------------------------
    def get_device(self, index: int = 0) -> torch.device:
        return torch.device("cuda", index)

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        """Return cached blocks to the driver so the next run (or another process) sees the memory free."""
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
