"""Trainer attributes that belong to another object (``trainer.global_step`` is ``trainer.state.global_step``).

The loop state lives in :class:`prec.training.run_state.RunState` and the process layout in the strategy; the
Trainer shows them under Lightning's names without keeping a copy that could drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["Forwarded"]

T = TypeVar("T")


class Forwarded(Generic[T]):
    """A Trainer attribute read from ``trainer.<owner>`` under the same name: one truth, never a copy.

    Read-only, as a property without a setter is, unless ``convert`` is given: then setting it writes
    ``convert(value)`` to the owner (``trainer.should_stop = 1`` stores ``True``)."""

    def __init__(self, owner: str, convert: Callable[[Any], T] | None = None) -> None:
        self.owner = owner
        self.convert = convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, trainer: None, owner: type | None = None) -> Forwarded[T]: ...
    @overload
    def __get__(self, trainer: object, owner: type | None = None) -> T: ...
    def __get__(self, trainer: object, owner: type | None = None) -> Forwarded[T] | T:
        if trainer is None:
            return self
        return getattr(getattr(trainer, self.owner), self.name)  # type: ignore[no-any-return]

    def __set__(self, trainer: object, value: T) -> None:
        if self.convert is None:
            raise AttributeError(f"property {self.name!r} of {type(trainer).__name__!r} object has no setter")
        setattr(getattr(trainer, self.owner), self.name, self.convert(value))
