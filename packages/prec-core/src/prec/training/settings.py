"""The Trainer's setting attributes (``trainer.max_epochs`` …): each reads ``trainer.settings``, never a copy."""

from __future__ import annotations

from typing import Any

__all__ = ["Setting"]


class Setting:
    """A Trainer attribute that reads what the run uses (``trainer.settings``): one truth, never a copy."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, trainer: Any, owner: type | None = None) -> Any:
        if trainer is None:
            return self
        return getattr(trainer.settings, self.name)

    def __set__(self, trainer: Any, value: Any) -> None:
        """Change what the next run uses (``trainer.max_epochs = 3`` before resuming): checked as the constructor
        checks it, and written to ``trainer.settings`` only, so there is still one truth."""
        trainer.settings = trainer.settings.with_setting(self.name, value)
