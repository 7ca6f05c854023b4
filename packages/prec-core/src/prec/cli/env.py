"""What a bug report needs to know about this machine: versions of prec, its plugins, torch, CUDA and Python, the
platform, and which accelerators compute bfloat16 natively. Shared by ``prec list`` (one line) and ``prec env``."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def torch_info() -> dict[str, Any]:
    """torch's version and CUDA build; never initialises a device (``prec list`` must stay safe anywhere)."""
    try:
        import torch
    except ImportError as error:  # prec-core without torch cannot train, but the report must still print
        return {"torch": None, "cuda": None, "error": f"{type(error).__name__}: {error}"}
    return {"torch": torch.__version__, "cuda": torch.version.cuda}


def environment(registry: Any, accelerators: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``environment`` object of ``prec list --json`` and ``prec env``."""
    from prec._version import __version__

    return {
        "prec": __version__,
        **torch_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "system": f"{platform.system()} {platform.machine()}",
        "native_bf16": {acc["name"]: acc["native_bf16"] for acc in accelerators if acc["available"]},
        "plugins": {
            info.distribution: info.version
            for info in sorted(registry.plugins.values(), key=lambda info: info.distribution or "")
            if info.distribution and info.status == "ok"
        },
        "variables": {key: value for key, value in sorted(os.environ.items()) if key.startswith("PREC_")},
        "executable": sys.executable,
    }


def one_line(env: dict[str, Any]) -> str:
    """``prec 0.1.0 | torch 2.13.0+cpu (CUDA none) | Python 3.11.9 | Linux-6.1 | native bf16: cpu no``."""
    native = ", ".join(_yes_no(name, value) for name, value in env["native_bf16"].items())
    return (
        f"prec {env['prec']} | torch {env['torch'] or 'not installed'} (CUDA {env['cuda'] or 'none'})"
        f" | Python {env['python']} | {env['system']} | native bf16: {native or 'no accelerator'}"
    )


def _yes_no(name: str, value: bool | None) -> str:
    return f"{name} {'?' if value is None else 'yes' if value else 'no'}"
