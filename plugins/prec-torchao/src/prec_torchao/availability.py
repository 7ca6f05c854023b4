"""Whether torchao can be used here, decided without importing it.

``prec list`` calls every plugin's registration hook, and importing torchao takes seconds (it loads its kernels and
registers many ops), so registration only asks the import system and the installed metadata. The real import
happens once, when a Trainer selects an fp8 precision; a torchao that fails there (built for another torch) is
reported with the error it raised.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from prec.errors import UnsupportedPrecisionError

#: The oldest torchao release this package is tested with (torchao 0.18 pairs with torch 2.13).
MIN_TORCHAO = (0, 18, 0)
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
INSTALL_HINT = "pip install 'torchao>=0.18.0' (the torchao release built for your torch)"


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def torchao_version() -> str | None:
    """The installed torchao's version from its metadata, or ``None`` if it has none."""
    try:
        return metadata.version("torchao")
    except metadata.PackageNotFoundError:
        return None


def unavailable_reason() -> str | None:
    """Why prec-torchao cannot work here (torchao missing or too old), or ``None``. Imports nothing."""
    try:
        spec = importlib.util.find_spec("torchao")
    except (ImportError, ValueError) as error:
        return f"torchao cannot be found ({type(error).__name__}: {error}); {INSTALL_HINT}"
    if spec is None:
        return f"torchao is not installed; {INSTALL_HINT}"
    version = torchao_version()
    if version is not None and _version_tuple(version) < MIN_TORCHAO:
        needed = ".".join(map(str, MIN_TORCHAO))
        return f"torchao {version} is too old (prec-torchao needs torchao>={needed}); {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class Float8Api:
    """The three pieces of torchao this package uses. ``Float8Linear`` is not in ``torchao.float8``'s public names;
    it is the class ``convert_to_float8_training`` creates, needed to recognise converted layers."""

    convert_to_float8_training: Any
    Float8LinearConfig: Any
    Float8Linear: type


def load_float8() -> Float8Api:
    """Import ``torchao.float8``, or raise :class:`UnsupportedPrecisionError` saying why it cannot be used.

    torchao logs a warning for every optional kernel library it cannot load (the CUDA ones, on a CPU torch), and
    torch one for a deprecated registration torchao makes; neither says anything about fp8 training, so both
    loggers are quietened for the import.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise UnsupportedPrecisionError(f"fp8 precisions need torchao: {reason}.")
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        float8 = importlib.import_module("torchao.float8")
        linear = importlib.import_module("torchao.float8.float8_linear")
        return Float8Api(float8.convert_to_float8_training, float8.Float8LinearConfig, linear.Float8Linear)
    except Exception as error:  # noqa: BLE001 - any import failure is the reason the precision cannot run
        import torch

        raise UnsupportedPrecisionError(
            f"torchao {torchao_version() or '(unknown version)'} is installed but failed to import with torch"
            f" {torch.__version__}: {type(error).__name__}: {error}. It is probably built for another torch;"
            f" {INSTALL_HINT}."
        ) from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
