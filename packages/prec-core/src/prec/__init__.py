"""prec: pluggable precision for PyTorch training.

``import prec`` is cheap: it loads no plugin and builds no registry. Both happen on first use (a Trainer,
:func:`get_precision`, ``prec list``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from prec._warnings import warn
from prec.errors import (
    AcceleratorUnavailableError,
    CheckpointError,
    ConfigurationError,
    LegacyPrecisionWarning,
    NonFiniteError,
    PerformanceWarning,
    PluginError,
    PluginWarning,
    PrecWarning,
    UnknownAcceleratorError,
    UnknownPrecisionError,
    UnknownStrategyError,
    UnsupportedPrecisionError,
)
from prec.hookspecs import RegisterAccelerator, RegisterPrecision, RegisterStrategy, hookimpl
from prec.options import Option, check_options

if TYPE_CHECKING:
    from prec.accelerator import Accelerator, Availability
    from prec.callbacks import Callback
    from prec.loggers import CSVLogger
    from prec.model_checkpoint import ModelCheckpoint
    from prec.module import TrainingModule
    from prec.plugins import get_registry, register_plugin, reset_registry, unregister_plugin
    from prec.precision import MixedPrecision, Precision, TruePrecision
    from prec.strategy import Strategy
    from prec.trainer import Trainer

try:
    from importlib.metadata import version as _version

    __version__ = _version("prec-core")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    __version__ = "0+unknown"

_LAZY = {
    "Accelerator": "prec.accelerator",
    "AttributeDict": "prec.hparams",
    "Availability": "prec.accelerator",
    "BaseFinetuning": "prec.finetuning",
    "CSVLogger": "prec.loggers",
    "Callback": "prec.callbacks",
    "DataModule": "prec.datamodule",
    "Deterministic": "prec.seed",
    "EarlyStopping": "prec.early_stopping",
    "LearningRateMonitor": "prec.lr_monitor",
    "Logger": "prec.loggers",
    "TensorBoardLogger": "prec.loggers",
    "MixedPrecision": "prec.precision",
    "ModelCheckpoint": "prec.model_checkpoint",
    "NonFinitePolicy": "prec.precision",
    "RunState": "prec.run_state",
    "Precision": "prec.precision",
    "ProgressBarCallback": "prec.progress",
    "StageData": "prec.datamodule",
    "Strategy": "prec.strategy",
    "TQDMProgressBar": "prec.progress",
    "Trainer": "prec.trainer",
    "TrainingModule": "prec.module",
    "TruePrecision": "prec.precision",
    "get_registry": "prec.plugins",
    "load_from_checkpoint": "prec.hparams",
    "register_plugin": "prec.plugins",
    "reset_registry": "prec.plugins",
    "resolve_dataloaders": "prec.datamodule",
    "save_hyperparameters": "prec.hparams",
    "seed_everything": "prec.seed",
    "unregister_plugin": "prec.plugins",
    "worker_init_fn": "prec.seed",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


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
    from prec.plugins import get_registry

    registry = get_registry()
    return registry.select_precision(precision, registry.select_accelerator(accelerator), options)[0]


__all__ = [
    "Accelerator",
    "AcceleratorUnavailableError",
    "AttributeDict",
    "Availability",
    "BaseFinetuning",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "ConfigurationError",
    "DataModule",
    "Deterministic",
    "EarlyStopping",
    "LearningRateMonitor",
    "LegacyPrecisionWarning",
    "Logger",
    "MixedPrecision",
    "ModelCheckpoint",
    "NonFiniteError",
    "NonFinitePolicy",
    "Option",
    "PerformanceWarning",
    "PluginError",
    "PluginWarning",
    "PrecWarning",
    "Precision",
    "ProgressBarCallback",
    "RegisterAccelerator",
    "RegisterPrecision",
    "RegisterStrategy",
    "RunState",
    "StageData",
    "Strategy",
    "TQDMProgressBar",
    "TensorBoardLogger",
    "Trainer",
    "TrainingModule",
    "TruePrecision",
    "UnknownAcceleratorError",
    "UnknownPrecisionError",
    "UnknownStrategyError",
    "UnsupportedPrecisionError",
    "__version__",
    "check_options",
    "get_precision",
    "get_registry",
    "hookimpl",
    "load_from_checkpoint",
    "register_plugin",
    "reset_registry",
    "resolve_dataloaders",
    "save_hyperparameters",
    "seed_everything",
    "unregister_plugin",
    "warn",
    "worker_init_fn",
]
