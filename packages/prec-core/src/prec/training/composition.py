"""The composition root: the process-wide registry, built by the plugin manager from prec-core's internal plugins
(handed in here, as tox hands its internal plugins to the same manager as external ones) and every installed one.

Everything that needs the registry (the Trainer, ``prec.get_precision``, the CLI, the conformance kit) asks here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prec.plugin import manager
from prec.training import builtin_strategies

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.plugin.registry import Registry
    from prec.precision import Precision

#: prec-core's own plugins, by plugin name: registered through the same hooks as any installed package.
INTERNAL_PLUGINS: dict[str, object] = {manager.CORE_PLUGIN: builtin_strategies}

__all__ = ["INTERNAL_PLUGINS", "get_precision", "get_registry"]


def get_registry() -> Registry:
    """The process-wide registry, built from the installed plugins on first use and cached."""
    return manager.get_registry(INTERNAL_PLUGINS)


def get_precision(
    precision: str | int | None = None, accelerator: str | Accelerator = "auto", **options: Any
) -> Precision:
    """The precision plugin for ``precision`` on ``accelerator``, for your own training loop.

    Selection goes through the same front door as the Trainer's (``Registry.select_precision``), so it raises the
    same errors: :class:`ConfigurationError` naming the argument for a value of the wrong type,
    :class:`UnknownPrecisionError` for a name nobody knows, :class:`UnsupportedPrecisionError` for a pair no
    installed plugin provides, :class:`PluginError` when the providing plugin fails. Accelerator names are
    case-insensitive (``"CPU"``, ``"Auto"``).
    """
    registry = get_registry()
    return registry.select_precision(precision, registry.select_accelerator(accelerator), options)[0]
