"""Warnings that point at the user's line, not at prec's internals."""

from __future__ import annotations

import sys
import warnings


def _internal(module: str) -> bool:
    root = module.partition(".")[0]
    return root == "prec" or root.startswith("prec_") or root in {"contextlib", "importlib", "functools"}


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the stack level of the first caller outside prec and its plugins."""
    frame = sys._getframe(1)
    level = 2  # stacklevel 1 is this function itself
    while frame is not None and _internal(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
