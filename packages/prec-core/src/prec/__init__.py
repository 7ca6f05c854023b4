"""prec: pluggable precision for PyTorch training.

``import prec`` is cheap: it loads no plugin and builds no registry. Both happen on first use (a Trainer,
:func:`get_precision`, ``prec list``). Every public name is declared once, in :data:`_EXPORTS` (name -> module);
``__all__`` is that table's keys. The errors, the hook markers and the options are imported at once (plugins use
them at import time); everything else is imported when first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from prec._version import __version__
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
    StorageFullError,
    UnknownAcceleratorError,
    UnknownPrecisionError,
    UnknownStrategyError,
    UnsupportedPrecisionError,
)
from prec.hookspecs import RegisterAccelerator, RegisterPrecision, RegisterStrategy, hookimpl
from prec.options import Option, check_options

if TYPE_CHECKING:
    from prec.accelerator import Accelerator, Availability
    from prec.callbacks.drift import DriftCheck
    from prec.callbacks.early_stopping import EarlyStopping
    from prec.callbacks.finetuning import BaseFinetuning
    from prec.callbacks.lr_monitor import LearningRateMonitor
    from prec.callbacks.model_checkpoint import ModelCheckpoint
    from prec.callbacks.numerics import NumericsMonitor
    from prec.callbacks.progress import ProgressBarCallback, TQDMProgressBar
    from prec.loggers import CSVLogger, Logger, TensorBoardLogger
    from prec.model.callback import Callback
    from prec.model.datamodule import DataModule, StageData, resolve_dataloaders
    from prec.model.hparams import AttributeDict, load_from_checkpoint, save_hyperparameters
    from prec.model.module import TrainingModule
    from prec.plugin.manager import register_plugin, reset_registry, unregister_plugin
    from prec.precision import MixedPrecision, NonFinitePolicy, Precision, TruePrecision
    from prec.seed import Deterministic, seed_everything, worker_init_fn
    from prec.strategies.base import Strategy
    from prec.trainer import Trainer
    from prec.training.composition import get_precision, get_registry
    from prec.training.run_state import RunState

#: Every public name and the module that defines it: the one declaration of prec's public API.
_EXPORTS: dict[str, str] = {
    "__version__": "prec._version",
    "warn": "prec._warnings",
    "AcceleratorUnavailableError": "prec.errors",
    "CheckpointError": "prec.errors",
    "ConfigurationError": "prec.errors",
    "LegacyPrecisionWarning": "prec.errors",
    "NonFiniteError": "prec.errors",
    "PerformanceWarning": "prec.errors",
    "PluginError": "prec.errors",
    "PluginWarning": "prec.errors",
    "PrecWarning": "prec.errors",
    "StorageFullError": "prec.errors",
    "UnknownAcceleratorError": "prec.errors",
    "UnknownPrecisionError": "prec.errors",
    "UnknownStrategyError": "prec.errors",
    "UnsupportedPrecisionError": "prec.errors",
    "RegisterAccelerator": "prec.hookspecs",
    "RegisterPrecision": "prec.hookspecs",
    "RegisterStrategy": "prec.hookspecs",
    "hookimpl": "prec.hookspecs",
    "Option": "prec.options",
    "check_options": "prec.options",
    "Accelerator": "prec.accelerator",
    "Availability": "prec.accelerator",
    "Deterministic": "prec.seed",
    "seed_everything": "prec.seed",
    "worker_init_fn": "prec.seed",
    "MixedPrecision": "prec.precision",
    "NonFinitePolicy": "prec.precision",
    "Precision": "prec.precision",
    "TruePrecision": "prec.precision",
    "CSVLogger": "prec.loggers",
    "Logger": "prec.loggers",
    "TensorBoardLogger": "prec.loggers",
    "AttributeDict": "prec.model.hparams",
    "load_from_checkpoint": "prec.model.hparams",
    "save_hyperparameters": "prec.model.hparams",
    "Callback": "prec.model.callback",
    "DataModule": "prec.model.datamodule",
    "StageData": "prec.model.datamodule",
    "resolve_dataloaders": "prec.model.datamodule",
    "TrainingModule": "prec.model.module",
    "Strategy": "prec.strategies.base",
    "register_plugin": "prec.plugin.manager",
    "reset_registry": "prec.plugin.manager",
    "unregister_plugin": "prec.plugin.manager",
    "get_precision": "prec.training.composition",
    "get_registry": "prec.training.composition",
    "RunState": "prec.training.run_state",
    "BaseFinetuning": "prec.callbacks.finetuning",
    "DriftCheck": "prec.callbacks.drift",
    "EarlyStopping": "prec.callbacks.early_stopping",
    "LearningRateMonitor": "prec.callbacks.lr_monitor",
    "ModelCheckpoint": "prec.callbacks.model_checkpoint",
    "NumericsMonitor": "prec.callbacks.numerics",
    "ProgressBarCallback": "prec.callbacks.progress",
    "TQDMProgressBar": "prec.callbacks.progress",
    "Trainer": "prec.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
