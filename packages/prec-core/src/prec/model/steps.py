"""Calling a module's ``*_step`` methods the way they were written."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["step_caller"]


def step_caller(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function(batch, batch_idx)``, or ``function(batch)`` for a ``*_step`` written without ``batch_idx``."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return function
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == 1 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return lambda batch, batch_idx: function(batch)
    return function
