"""Whether bitsandbytes can be used here, decided without importing it.

``prec list`` calls every plugin's registration hook, and importing bitsandbytes takes seconds (it loads a native
library and registers its ops), so registration only asks the import system and the installed metadata. The real
import happens once, when a precision of this package is selected.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from importlib import metadata
from types import ModuleType

from prec.errors import UnsupportedPrecisionError

#: The bitsandbytes release this package is built and tested against (its CPU kernels are what the tests run).
MIN_BITSANDBYTES = (0, 50, 2)
INSTALL_HINT = "pip install 'bitsandbytes>=0.50.2'"
#: bitsandbytes logs a warning at import on CPUs with avx512_bf16 when the optional ``kernels`` package is missing;
#: it concerns an inference-only kernel this package never uses.
QUIET_LOGGERS = ("bitsandbytes",)


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes' version from its metadata, or ``None`` if it has none."""
    try:
        return metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return None


def unavailable_reason() -> str | None:
    """Why prec-bnb cannot work here (bitsandbytes missing or too old), or ``None``. Imports nothing."""
    try:
        spec = importlib.util.find_spec("bitsandbytes")
    except (ImportError, ValueError) as error:
        return f"bitsandbytes cannot be found ({type(error).__name__}: {error}); {INSTALL_HINT}"
    if spec is None:
        return f"bitsandbytes is not installed; {INSTALL_HINT}"
    version = bitsandbytes_version()
    if version is not None and _version_tuple(version) < MIN_BITSANDBYTES:
        needed = ".".join(map(str, MIN_BITSANDBYTES))
        return f"bitsandbytes {version} is too old (prec-bnb needs bitsandbytes>={needed}); {INSTALL_HINT}"
    return None


def load_bitsandbytes() -> ModuleType:
    """Import bitsandbytes, or raise :class:`UnsupportedPrecisionError` saying why it cannot be used."""
    reason = unavailable_reason()
    if reason is not None:
        raise UnsupportedPrecisionError(f"bitsandbytes precisions need bitsandbytes: {reason}.")
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module("bitsandbytes")
    except Exception as error:  # noqa: BLE001 - any import failure is the reason the precision cannot run
        import torch

        raise UnsupportedPrecisionError(
            f"bitsandbytes {bitsandbytes_version() or '(unknown version)'} is installed but failed to import with"
            f" torch {torch.__version__}: {type(error).__name__}: {error}; {INSTALL_HINT}."
        ) from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
