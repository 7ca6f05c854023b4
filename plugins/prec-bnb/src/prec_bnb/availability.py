"""Whether bitsandbytes can be used here, decided without importing it.

``prec list`` calls every plugin's registration hook, and importing bitsandbytes takes seconds (it loads a native
library and registers its ops), so registration only asks the import system and the installed metadata (through
:class:`prec.plugin.Requirement`, as every plugin with an optional dependency does). The real import happens once,
when a precision of this package is selected.
"""

from __future__ import annotations

from types import ModuleType

from prec.plugin import Requirement

#: The bitsandbytes release this package is built and tested against (its CPU kernels are what the tests run).
MIN_BITSANDBYTES = "0.50.2"
#: bitsandbytes logs a warning at import on CPUs with avx512_bf16 when the optional ``kernels`` package is missing;
#: it concerns an inference-only kernel this package never uses.
QUIET_LOGGERS = ("bitsandbytes",)
BITSANDBYTES = Requirement("bitsandbytes", plugin="prec-bnb", minimum=MIN_BITSANDBYTES, quiet=QUIET_LOGGERS)


def bitsandbytes_version() -> str | None:
    """The installed bitsandbytes' version from its metadata, or ``None`` if it has none."""
    return BITSANDBYTES.version()


def unavailable_reason() -> str | None:
    """Why prec-bnb cannot work here (bitsandbytes missing or too old), or ``None``. Imports nothing."""
    return BITSANDBYTES.unavailable_reason()


def load_bitsandbytes() -> ModuleType:
    """Import bitsandbytes, or raise :class:`prec.UnsupportedPrecisionError` saying why it cannot be used."""
    return BITSANDBYTES.import_module("bitsandbytes")
