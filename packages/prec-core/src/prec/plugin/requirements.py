"""A plugin's optional dependency: why it cannot be used here, decided without importing it, and its quiet import.

``prec list`` calls every plugin's registration hook, and importing a heavy dependency (torchao, bitsandbytes) takes
seconds, so registration should only ask the import system and the installed metadata; the real import belongs to
the moment a Trainer selects one of the plugin's precisions. :class:`Requirement` does both halves the same way for
every plugin, so each one reports a missing, too old or broken dependency with the same informative message::

    TORCHAO = Requirement("torchao", plugin="prec-torchao", minimum="0.18.0")

    TORCHAO.unavailable_reason()  # None, or "torchao 0.5.0 is too old (prec-torchao needs torchao>=0.18.0); pip ..."
    float8 = TORCHAO.load("fp8", lambda: importlib.import_module("torchao.float8"))
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TypeVar

from prec.errors import ConfigurationError, UnsupportedPrecisionError

T = TypeVar("T")


def version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers a version string starts with (``"2.13.0+cpu"`` -> ``(2, 13, 0)``; ``()`` if none), so
    versions compare as numbers: ``"0.9"`` is older than ``"0.18"``."""
    match = re.match(r"(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


@contextmanager
def quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Raise the named loggers to ERROR for the block, then restore their levels: a dependency's import-time
    warnings about optional kernels it cannot load say nothing about training."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@dataclass(frozen=True)
class Requirement:
    """An optional dependency of a plugin: the top-level ``module`` it imports, the ``plugin`` (distribution name)
    that needs it, the oldest usable release (``minimum``, ``""`` for any), the ``distribution`` whose metadata
    holds its version (default: ``module``), what to run to install it (default: ``pip install '<dist>>=<min>'``)
    and the loggers to quiet while importing it (``quiet``)."""

    module: str
    plugin: str
    minimum: str = ""
    distribution: str = ""
    install_hint: str = ""
    quiet: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.module or not self.module.isidentifier():
            raise ConfigurationError(
                f"Requirement(module={self.module!r}): expected a top-level module name such as 'torchao'."
            )
        if self.minimum and not version_tuple(self.minimum):
            raise ConfigurationError(
                f"Requirement(minimum={self.minimum!r}): expected a release such as '0.18.0', or '' for any."
            )

    @property
    def distribution_name(self) -> str:
        """The distribution whose metadata holds the version (``module`` unless named)."""
        return self.distribution or self.module

    @property
    def hint(self) -> str:
        """What to run to get a usable release."""
        if self.install_hint:
            return self.install_hint
        pin = f">={self.minimum}" if self.minimum else ""
        return f"pip install '{self.distribution_name}{pin}'"

    def version(self) -> str | None:
        """The installed version from the distribution's metadata, or ``None`` without metadata. Imports nothing."""
        try:
            return metadata.version(self.distribution_name)
        except metadata.PackageNotFoundError:
            return None

    def unavailable_reason(self) -> str | None:
        """Why the plugin cannot use the dependency here (not found, or older than ``minimum``), or ``None``.

        Asks the import system for the module's spec and the metadata for its version; imports nothing, so it is
        cheap enough for registration. A dependency found here may still fail to import: :meth:`load` says so.
        """
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError) as error:
            return f"{self.module} cannot be found ({type(error).__name__}: {error}); {self.hint}"
        if spec is None:
            return f"{self.module} is not installed; {self.hint}"
        version = self.version()
        if self.minimum and version is not None and version_tuple(version) < version_tuple(self.minimum):
            return (
                f"{self.module} {version} is too old ({self.plugin} needs {self.distribution_name}>={self.minimum});"
                f" {self.hint}"
            )
        return None

    def load(self, what: str, build: Callable[[], T]) -> T:
        """``build()`` (which imports the dependency's modules) with the ``quiet`` loggers quieted, or
        :class:`~prec.UnsupportedPrecisionError` saying why it cannot be used: the :meth:`unavailable_reason`, or the
        error the import raised (chained). ``what`` names the precisions that need it (``"fp8"``)."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise UnsupportedPrecisionError(f"{what} precisions need {self.module}: {reason}.")
        with quiet_loggers(self.quiet):
            try:
                return build()
            except Exception as error:  # noqa: BLE001 - any import failure is the reason the precision cannot run
                raise UnsupportedPrecisionError(self._import_failure(error)) from error

    def _import_failure(self, error: Exception) -> str:
        import torch  # the usual cause is a build for another torch: name the one installed

        return (
            f"{self.module} {self.version() or '(unknown version)'} is installed but failed to import with torch"
            f" {torch.__version__} ({self.plugin} needs it): {type(error).__name__}: {error}. A build for another"
            f" torch is the usual cause; {self.hint}."
        )

    def import_module(self, what: str) -> ModuleType:
        """The dependency's top-level module, imported as :meth:`load` does."""
        return self.load(what, lambda: importlib.import_module(self.module))
