"""The Trainer's arguments, checked once, up front, into one frozen :class:`TrainerConfig`.

Every argument is validated before anything is built (no registry lookup, no process, no file), and every
mistake is a :class:`~prec.ConfigurationError` that names the argument and what it accepts: ``max_steps=1.5``
or ``callbacks=5`` fail at ``Trainer(...)``, not as a ``TypeError`` or a silent surprise steps later. Lightning
arguments that prec leaves out on purpose get an error that says why and what to do instead (:data:`LEFT_OUT`).
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import os
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from prec.accelerator import Accelerator, DeviceRequest, normalize_devices
from prec.errors import ConfigurationError
from prec.loggers import LoggerGroup, resolve_loggers
from prec.model.callback import Callback
from prec.precision import Precision
from prec.strategies.base import Strategy
from prec.training.left_out import LEFT_OUT

__all__ = [
    "LEFT_OUT",
    "TrainerConfig",
    "check_accelerator",
    "check_clipping",
    "check_limit",
    "reject_unknown_arguments",
]

#: ``max_epochs`` when neither ``max_epochs`` nor ``max_steps`` is given (as in Lightning).
DEFAULT_MAX_EPOCHS = 1000


@dataclass(frozen=True)
class TrainerConfig:
    """What the Trainer was asked to do, validated and in one canonical form per argument.

    Built from the Trainer's keyword arguments (``TrainerConfig(max_epochs=3, ...)``); building it raises
    :class:`~prec.ConfigurationError` for the first bad argument. Canonical forms: names are lower case,
    ``callbacks`` and ``plugins`` are tuples, ``fast_dev_run`` is a batch count (``0``: off), ``max_steps`` is
    ``-1`` for no limit, ``max_epochs`` is filled in (1000) when neither limit is given, ``gradient_clip_val`` is
    ``None`` for no clipping, ``logger`` is ``True``/``False`` or a logger, ``default_root_dir`` is a ``Path``.
    See :class:`prec.Trainer` for what each argument means.
    """

    accelerator: str | Accelerator = "auto"
    devices: DeviceRequest = "auto"
    precision: str | int | None = None
    plugins: tuple[Precision, ...] = ()
    strategy: str | Strategy = "auto"
    num_nodes: int = 1
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    limit_predict_batches: int | float | None = None
    overfit_batches: int | float = 0
    check_val_every_n_epoch: int = 1
    val_check_interval: int | float | None = None
    num_sanity_val_steps: int = 2
    reload_dataloaders_every_n_epochs: int = 0
    log_every_n_steps: int = 50
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    accumulate_grad_batches: int = 1
    fast_dev_run: int = 0
    deterministic: bool | Literal["warn"] | None = None
    benchmark: bool | None = None
    logger: Any = True  # True, False/None, a logger or a list of them; stored as a LoggerGroup or None
    callbacks: tuple[Callback, ...] = ()
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    enable_model_summary: bool = True
    default_root_dir: Path | None = None
    precision_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    nonfinite: Any = "skip"  # a mode name or a prec.NonFinitePolicy

    def __post_init__(self) -> None:
        checked = {
            "accelerator": check_accelerator(self.accelerator),
            "devices": normalize_devices(self.devices),
            "precision": self.precision,  # names are resolved by the registry, which knows the plugins' names
            "plugins": _check_plugins(self.plugins),
            "strategy": _check_strategy(self.strategy),
            "num_nodes": _int("num_nodes", self.num_nodes, 1, "an int >= 1"),
            "max_epochs": _optional_int("max_epochs", self.max_epochs, 0, "an int >= 0, or None"),
            "min_epochs": _optional_int("min_epochs", self.min_epochs, 0, "an int >= 0, or None"),
            "max_steps": _max_steps(self.max_steps),
            "min_steps": _optional_int("min_steps", self.min_steps, 0, "an int >= 0, or None"),
            "limit_train_batches": check_limit("limit_train_batches", self.limit_train_batches),
            "limit_val_batches": check_limit("limit_val_batches", self.limit_val_batches),
            "limit_test_batches": check_limit("limit_test_batches", self.limit_test_batches),
            "limit_predict_batches": check_limit("limit_predict_batches", self.limit_predict_batches),
            "overfit_batches": check_limit("overfit_batches", self.overfit_batches) or 0,
            "check_val_every_n_epoch": _int("check_val_every_n_epoch", self.check_val_every_n_epoch, 1, "an int >= 1"),
            "val_check_interval": _val_check_interval(self.val_check_interval),
            "num_sanity_val_steps": _int(
                "num_sanity_val_steps", self.num_sanity_val_steps, -1, "an int >= 0, or -1 (every validation batch)"
            ),
            "reload_dataloaders_every_n_epochs": _int(
                "reload_dataloaders_every_n_epochs", self.reload_dataloaders_every_n_epochs, 0, "an int >= 0 (0: never)"
            ),
            "log_every_n_steps": _int("log_every_n_steps", self.log_every_n_steps, 1, "an int >= 1"),
            "accumulate_grad_batches": _int("accumulate_grad_batches", self.accumulate_grad_batches, 1, "an int >= 1"),
            "fast_dev_run": _fast_dev_run(self.fast_dev_run),
            "deterministic": _deterministic(self.deterministic),
            "benchmark": None if self.benchmark is None else _bool("benchmark", self.benchmark),
            "logger": _check_logger(self.logger),
            "callbacks": _check_callbacks(self.callbacks),
            "enable_progress_bar": _bool("enable_progress_bar", self.enable_progress_bar),
            "enable_checkpointing": _bool("enable_checkpointing", self.enable_checkpointing),
            "enable_model_summary": _bool("enable_model_summary", self.enable_model_summary),
            "default_root_dir": _root_dir(self.default_root_dir),
            "precision_options": _precision_options(self.precision_options),
            "nonfinite": _nonfinite(self.nonfinite),
        }
        checked["gradient_clip_val"], checked["gradient_clip_algorithm"] = check_clipping(
            self.gradient_clip_val, self.gradient_clip_algorithm
        )
        defaulted = checked["max_epochs"] is None and checked["max_steps"] == -1
        if defaulted:
            checked["max_epochs"] = DEFAULT_MAX_EPOCHS
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        self._check_together(defaulted)

    def _check_together(self, max_epochs_defaulted: bool) -> None:
        """Arguments that are fine alone but contradict each other."""
        if self.plugins and self.precision is not None:
            raise ConfigurationError(
                f"precision={self.precision!r} and plugins=[{self.plugins[0]!r}] both choose the precision; pass one."
            )
        if self.plugins and self.precision_options:
            raise ConfigurationError("precision_options apply to a precision built by name, not to plugins=[...].")
        if self.overfit_batches:
            given = [name for name in ("limit_train_batches", "limit_val_batches") if getattr(self, name) is not None]
            if given:
                raise ConfigurationError(
                    f"overfit_batches={self.overfit_batches} sets limit_train_batches and limit_val_batches itself,"
                    f" but {' and '.join(given)} is given too; pass one of them."
                )
        for bound in ("epochs", "steps"):
            low, high = getattr(self, f"min_{bound}"), getattr(self, f"max_{bound}")
            defaulted = bound == "epochs" and max_epochs_defaulted
            if low is not None and high is not None and high != -1 and low > high:
                raise ConfigurationError(
                    f"min_{bound}={low} is more than max_{bound}={high}; training could never satisfy both."
                    + (" (max_epochs is 1000 when neither it nor max_steps is given.)" if defaulted else "")
                )

    def for_run(self) -> TrainerConfig:
        """What a run uses: this configuration, with ``fast_dev_run``'s settings applied as Lightning applies them
        (n batches of every stage, once, no sanity check, no logger, no checkpointing). The arguments as passed stay
        in ``self``; this is the one place that derives the other. ``overfit_batches`` limits the training and
        validation batches, also under ``fast_dev_run`` (as in Lightning)."""
        runs, overfit = self.fast_dev_run, self.overfit_batches
        if not runs and not overfit:
            return self
        run = copy.copy(self)
        for name, value in (
            {}
            if not runs
            else {
                "limit_train_batches": runs,
                "limit_val_batches": runs,
                "limit_test_batches": runs,
                "limit_predict_batches": runs,
                "max_epochs": 1,
                "max_steps": runs,
                "min_epochs": None,
                "min_steps": None,
                "num_sanity_val_steps": 0,
                "val_check_interval": None,
                "check_val_every_n_epoch": 1,
                "logger": None,
                "enable_checkpointing": False,
            }
        ).items():
            object.__setattr__(run, name, value)
        if overfit:
            object.__setattr__(run, "limit_train_batches", overfit)
            object.__setattr__(run, "limit_val_batches", overfit)
        return run

    def with_setting(self, name: str, value: Any) -> TrainerConfig:
        """A copy with ``name`` set to ``value``, checked as the constructor checks that argument alone."""
        if name not in self.argument_names():
            raise ConfigurationError(f"{name!r} is not a Trainer setting.")
        checked = getattr(TrainerConfig(**{name: value}), name)
        changed = copy.copy(self)
        object.__setattr__(changed, name, checked)
        return changed

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """Every argument the Trainer accepts, in signature order."""
        return tuple(item.name for item in fields(cls))


def reject_unknown_arguments(unknown: Mapping[str, Any]) -> None:
    """Turn keyword arguments the Trainer does not take into one ConfigurationError (never a ``TypeError``).

    A Lightning argument prec leaves out on purpose says why and what to do instead; any other name gets a
    did-you-mean from the accepted arguments."""
    if not unknown:
        return
    accepted = TrainerConfig.argument_names()
    lines = []
    for name in unknown:
        reason = LEFT_OUT.get(name)
        if reason is not None:
            lines.append(f"Trainer({name}=...) is not supported: {reason}")
            continue
        match = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        hint = f" Did you mean {match[0]!r}?" if match else ""
        lines.append(f"Trainer() has no argument {name!r}.{hint}")
    if any(name not in LEFT_OUT for name in unknown):
        lines.append(f"Accepted arguments: {', '.join(accepted)}.")
    raise ConfigurationError("\n".join(lines))


def check_accelerator(value: object) -> str | Accelerator:
    """An accelerator instance as is, or a name in lower case (``"Auto"`` works like ``"auto"``)."""
    if isinstance(value, Accelerator):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"accelerator={_show(value)} must be an accelerator name such as 'cpu', 'gpu' or 'auto',"
            " or a prec.Accelerator instance."
        )
    return value.strip().lower()


def check_clipping(value: object, algorithm: object) -> tuple[float | None, str | None]:
    """``0`` means no clipping, like ``None``; a bad value or algorithm is a ConfigurationError now, not later."""
    if value is not None and (not _is_real(value) or not 0 <= value < math.inf):  # type: ignore[operator]
        raise ConfigurationError(
            f"gradient_clip_val={_show(value)} must be a finite number >= 0 (0 or None: no clipping)."
        )
    if algorithm is not None:
        if not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value"):
            raise ConfigurationError(f"gradient_clip_algorithm={_show(algorithm)} must be 'norm' or 'value'.")
        algorithm = algorithm.lower()
    return (float(value) if value else None), algorithm  # type: ignore[arg-type]


def check_limit(name: str, value: object) -> int | float | None:
    """A batch limit: an int (batches), a float in [0, 1] (a fraction of the loader) or None (all batches)."""
    if value is None:
        return None
    if _is_int(value):
        if int(value) < 0:  # type: ignore[call-overload]
            raise ConfigurationError(f"{name}={value} must be >= 0.")
        return int(value)  # type: ignore[call-overload]
    if not _is_real(value):
        raise ConfigurationError(
            f"{name}={_show(value)} must be an int (batches), a float in [0, 1] (fraction) or None (all)."
        )
    if not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ConfigurationError(f"{name}={value} as a fraction must lie in [0, 1]; pass an int for a batch count.")
    return float(value)  # type: ignore[arg-type]


# -- one check per kind of argument ---------------------------------------------------------------------------
def _int(name: str, value: object, minimum: int, accepted: str) -> int:
    if not _is_int(value):
        hint = ""
        if _is_real(value) and float(value).is_integer():  # type: ignore[arg-type]
            hint = f" Did you mean {name}={int(value)}?"  # type: ignore[call-overload]
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = f" Did you mean {name}={int(value)}? (a number, not a string)"
        raise ConfigurationError(f"{name}={_show(value)} must be {accepted}.{hint}")
    number = int(value)  # type: ignore[call-overload]
    if number < minimum:
        raise ConfigurationError(f"{name}={number} must be {accepted}.")
    return number


def _optional_int(name: str, value: object, minimum: int, accepted: str) -> int | None:
    return None if value is None else _int(name, value, minimum, accepted)


def _max_steps(value: object) -> int:
    if value is None:
        return -1  # as in Lightning 1.x: no step limit
    return _int("max_steps", value, -1, "an int >= 0, or -1 / None for no step limit")


def _val_check_interval(value: object) -> int | float | None:
    interval = check_limit("val_check_interval", value)
    if interval == 0:
        raise ConfigurationError("val_check_interval=0 would never validate; pass None for end-of-epoch only.")
    return interval


def _fast_dev_run(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    return _int("fast_dev_run", value, 0, "a bool or an int >= 0 (batches per stage; 0/False: off)")


def _deterministic(value: object) -> bool | Literal["warn"] | None:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and value == "warn"):
        return value  # type: ignore[return-value]
    raise ConfigurationError(f"deterministic={_show(value)} must be True, False, 'warn' or None (leave torch as is).")


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name}={_show(value)} must be True or False.")
    return value


def _check_strategy(value: object) -> str | Strategy:
    if isinstance(value, Strategy):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"strategy={_show(value)} must be a strategy name such as 'auto', 'single', 'ddp' or 'fsdp',"
            " or a prec.Strategy instance."
        )
    return value.strip().lower()


def _check_plugins(value: object) -> tuple[Precision, ...]:
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    others = [item for item in items if not isinstance(item, Precision)]
    if others:
        raise ConfigurationError(
            f"plugins= takes prec.Precision instances (one, or a list of one); got {_show(others)}."
        )
    if len(items) > 1:
        raise ConfigurationError(f"plugins= holds {len(items)} precisions; pass one: {_show(items)}.")
    return tuple(items)  # type: ignore[arg-type]


def _check_logger(value: object) -> LoggerGroup | None:
    return resolve_loggers(value)


def _check_callbacks(value: object) -> tuple[Callback, ...]:
    if value is None:
        return ()
    if isinstance(value, Callback):
        return (value,)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"callbacks={_show(value)} must be a prec.Callback, a list of them, or None; got {type(value).__name__}."
        )
    items = tuple(value)
    others = [item for item in items if not isinstance(item, Callback)]
    if others:
        raise ConfigurationError(f"callbacks must be prec.Callback instances, got {_show(others)}.")
    return items


def _root_dir(value: object) -> Path:
    if value is None:
        try:
            return Path.cwd()
        except OSError as error:
            raise ConfigurationError(
                f"default_root_dir=None means the current directory, which cannot be read ({error});"
                " pass default_root_dir=<a directory>."
            ) from None
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise ConfigurationError(f"default_root_dir={_show(value)} must be a str or os.PathLike path, or None.")
    path = os.fspath(value)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ConfigurationError(
            f"default_root_dir={_show(value)} must be a non-empty text path (None: the current directory)."
        )
    return Path(path)


def _nonfinite(value: object) -> Any:
    from prec.precision.guard import NonFinitePolicy

    return NonFinitePolicy.coerce(value)  # type: ignore[arg-type]


def _precision_options(value: object) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"precision_options={_show(value)} must be a dict of option names to values, e.g. {{'init_scale': 1024}}."
        )
    keys = [key for key in value if not isinstance(key, str)]
    if keys:
        raise ConfigurationError(f"precision_options keys must be option names (str); got {_show(keys)}.")
    return MappingProxyType(dict(value))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """An int or float that is a number (``True`` and NaN are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _show(value: object) -> str:
    """A repr short enough for an error message, whatever the user passed."""
    return reprlib.repr(value)
