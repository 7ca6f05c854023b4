"""One family of errors for configuration mistakes, one for plugin failures.

Every configuration mistake a user can make (an unknown name, a pair no plugin supports, a device that is not
there) is a :class:`ConfigurationError`, which is a :class:`ValueError`, so ``except ValueError`` keeps working
for code that does not know prec. The subclasses exist so tests and tools can tell the cases apart.
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """The Trainer, a precision or an accelerator was asked for something that cannot work."""


class UnknownPrecisionError(ConfigurationError):
    """The precision value is not a name that prec or any installed plugin knows."""


class UnsupportedPrecisionError(ConfigurationError):
    """The precision is known, but no installed plugin provides it on this accelerator."""


class UnknownAcceleratorError(ConfigurationError):
    """The accelerator name is not registered by any installed plugin."""


class AcceleratorUnavailableError(ConfigurationError):
    """The accelerator is installed but cannot run on this machine (no device, no driver, no runtime)."""


class UnknownStrategyError(ConfigurationError):
    """The strategy name is not registered by any installed plugin."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model being trained."""


class StorageFullError(OSError):
    """A run could not write its logs: the disk, a quota or a file-size limit is full (``errno`` says which).

    The run stops at once (a run whose logs silently stop is worse than one that stops); every file written before
    is whole, and the rows not written are counted in the message. An :class:`OSError`, so ``except OSError`` keeps
    working. A full disk while saving a checkpoint is a :class:`CheckpointError` (the previous checkpoint intact)."""


class PluginError(RuntimeError):
    """A plugin failed to load or broke the registry rules (raised only under ``PREC_STRICT_PLUGINS=1``)."""


class NonFiniteError(FloatingPointError):
    """Training met inf/NaN gradients it must not step on: under ``Trainer(nonfinite="raise")`` at the first one,
    under the default ``"skip"`` after ``NonFinitePolicy.raise_after`` consecutive skipped steps. The message names
    the optimizer step, the loss scale (under a grad scaler) and the parameters whose gradients were non-finite."""


class PrecWarning(UserWarning):
    """Base class of every warning prec emits."""


class LegacyPrecisionWarning(PrecWarning):
    """A legacy precision value was given; the message names the canonical string."""


class PerformanceWarning(PrecWarning):
    """The configuration works but is likely slower than the user expects."""


class PluginWarning(PrecWarning):
    """A plugin failed to load or conflicts with another; everything else keeps working."""
