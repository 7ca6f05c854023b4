"""Whether XLA can run here, decided without importing torch_xla.

Importing torch_xla loads a large native library, may start the PJRT runtime and crashes outright when it was
built for another torch. ``prec list`` and CPU training must stay free of all that, so everything here reads
package metadata, environment variables and device files only.

The rule (in order):

1. torch_xla must be installed (``importlib.util.find_spec``, which does not execute it).
2. torch_xla and torch must share their major.minor release: torch_xla is compiled against one torch ABI and its
   metadata does not say which, so a mismatch would only surface as a crash at import.
3. A backend must be chosen or present: ``PJRT_DEVICE=CPU`` or ``PJRT_DEVICE=TPU`` set explicitly, or a TPU
   detected from ``/dev/accel*`` device files or a Google TPU PCI device under ``/sys/bus/pci/devices`` (which
   is how torch_xla counts chips). Other ``PJRT_DEVICE`` values (``CUDA``, ``NEURON``) are refused.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from importlib.metadata import PackageNotFoundError, version

from prec.accelerator import Availability

#: The torch_xla release this plugin is tested with (and the one the install hint names).
TESTED_RELEASE = "2.9.0"
#: ``PJRT_DEVICE`` values prec-xla runs on.
SUPPORTED_BACKENDS = ("CPU", "TPU")
INSTALL_HINT = (
    f"Install torch_xla with the torch release it was built for, e.g. `pip install prec-xla torch=={TESTED_RELEASE}"
    f" torch_xla=={TESTED_RELEASE}` (torch_xla X.Y needs torch X.Y), then run on a TPU or set PJRT_DEVICE=CPU to"
    " run XLA on the CPU."
)

_GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v2/v3, v4, v5p, v5e, v6e, 7x), as torch_xla 2.9 lists them.
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def release(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``"2.9.0+cu128"``; ``None`` if it has no such prefix."""
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def version_problem(torch_version: str | None, xla_version: str | None) -> str | None:
    """Why this torch / torch_xla pair cannot work together, or ``None`` when it can."""
    if xla_version is None:
        return "torch_xla is importable but has no installed metadata, so its torch release cannot be checked"
    if torch_version is None:
        return "torch has no installed metadata"
    wanted, have = release(xla_version), release(torch_version)
    if wanted is None or have is None or wanted != have:
        base = xla_version.split("+")[0]
        return (
            f"torch_xla {xla_version} is built for torch {'.'.join(map(str, wanted or ()))}.x but torch"
            f" {torch_version} is installed; install a matching pair: `pip install torch=={base} torch_xla=={base}`"
        )
    return None


def pjrt_device() -> str | None:
    """The backend named by ``PJRT_DEVICE`` (upper case), or ``None`` when unset or empty."""
    value = os.environ.get("PJRT_DEVICE", "").strip()
    return value.upper() or None


def tpu_chips() -> int:
    """Locally attached TPU chips, counted from device files (``/dev/accel*``, else Google TPU PCI devices)."""
    accel = glob.glob("/dev/accel[0-9]*")
    if accel:
        return len(accel)
    chips = 0
    for device in glob.glob("/sys/bus/pci/devices/*"):
        try:
            with open(os.path.join(device, "vendor"), encoding="ascii") as vendor_file:
                if vendor_file.read().strip() != _GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(device, "device"), encoding="ascii") as device_file:
                chips += device_file.read().strip() in _TPU_PCI_DEVICES
        except OSError:
            continue
    return chips


def backend() -> str | None:
    """``"CPU"`` or ``"TPU"`` when XLA would run on that backend here (ignoring whether torch_xla works)."""
    chosen = pjrt_device()
    if chosen is not None:
        return chosen if chosen in SUPPORTED_BACKENDS else None
    return "TPU" if tpu_chips() else None


def probe() -> Availability:
    """Apply the module's rule; the reason says what is missing, or which backend will run."""
    if importlib.util.find_spec("torch_xla") is None:
        return Availability(
            False, f"torch_xla is not installed (`pip install torch=={TESTED_RELEASE} torch_xla=={TESTED_RELEASE}`)"
        )
    problem = version_problem(installed_version("torch"), installed_version("torch_xla"))
    if problem:
        return Availability(False, problem)
    chosen = pjrt_device()
    if chosen is not None and chosen not in SUPPORTED_BACKENDS:
        return Availability(
            False,
            f"PJRT_DEVICE={chosen} is not a backend prec-xla runs on ({', '.join(SUPPORTED_BACKENDS)});"
            " use accelerator='cuda' for GPUs",
        )
    if chosen == "CPU":
        return Availability(True, "XLA on the host CPU (PJRT_DEVICE=CPU)")
    chips = tpu_chips()
    if chosen == "TPU":
        return Availability(True, f"TPU (PJRT_DEVICE=TPU, {chips} chip(s) found)")
    if chips:
        return Availability(True, f"TPU ({chips} chip(s) found)")
    return Availability(False, "no TPU found and PJRT_DEVICE is not set (PJRT_DEVICE=CPU runs XLA on the CPU)")


def device_count() -> int:
    """XLA devices one process sees: ``CPU_NUM_DEVICES`` (default 1) on the CPU backend, TPU chips otherwise."""
    chosen = backend()
    if chosen == "CPU":
        try:
            return max(int(os.environ.get("CPU_NUM_DEVICES", "1")), 1)
        except ValueError:
            return 1
    if chosen == "TPU":  # PJRT_DEVICE=TPU is trusted even where /dev and /sys are hidden (containers)
        return max(tpu_chips(), 1)
    return 0
