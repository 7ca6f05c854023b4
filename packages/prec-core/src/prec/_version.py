"""The installed version of prec-core, read once from the distribution's metadata."""

from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("prec-core")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = ["__version__"]
