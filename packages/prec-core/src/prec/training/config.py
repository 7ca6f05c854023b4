"""The Trainer's arguments, checked once, up front, into one frozen :class:`TrainerConfig`.

Every argument is validated before anything is built (no registry lookup, no process, no file), and every
mistake is a :class:`~prec.ConfigurationError` that names the argument and what it accepts: ``max_steps=1.5``
or ``callbacks=5`` fail at ``Trainer(...)``, not as a ``TypeError`` or a silent surprise steps later. Lightning
arguments that prec leaves out on purpose get an error that says why and what to do instead (:data:`LEFT_OUT`).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from prec._warnings import warn
from prec.accelerator import Accelerator, DeviceRequest, normalize_devices
from prec.errors import ConfigurationError, PrecWarning
from prec.loggers import LoggerGroup, resolve_loggers
from prec.loggers._paths import check_path
from prec.model.callback import Callback
from prec.precision import Precision
from prec.strategies.base import Strategy
from prec.training.checks import (
    check_accelerator,
    check_bool,
    check_clipping,
    check_int,
    check_limit,
    check_optional_int,
    show,
)
from prec.training.left_out import LEFT_OUT

__all__ = [
    "LEFT_OUT",
    "TrainerConfig",
    "check_accelerator",
    "check_ckpt_path",
    "check_clipping",
    "check_limit",
    "reject_unknown_arguments",
    "warn_empty_epoch",
    "warn_if_resumed_past_limits",
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
            "num_nodes": check_int("num_nodes", self.num_nodes, 1, "an int >= 1"),
            "max_epochs": check_optional_int("max_epochs", self.max_epochs, 0, "an int >= 0, or None"),
            "min_epochs": check_optional_int("min_epochs", self.min_epochs, 0, "an int >= 0, or None"),
            "max_steps": _max_steps(self.max_steps),
            "min_steps": check_optional_int("min_steps", self.min_steps, 0, "an int >= 0, or None"),
            "limit_train_batches": check_limit("limit_train_batches", self.limit_train_batches),
            "limit_val_batches": check_limit("limit_val_batches", self.limit_val_batches),
            "limit_test_batches": check_limit("limit_test_batches", self.limit_test_batches),
            "limit_predict_batches": check_limit("limit_predict_batches", self.limit_predict_batches),
            "overfit_batches": check_limit("overfit_batches", self.overfit_batches) or 0,
            "check_val_every_n_epoch": check_int(
                "check_val_every_n_epoch", self.check_val_every_n_epoch, 1, "an int >= 1"
            ),
            "val_check_interval": _val_check_interval(self.val_check_interval),
            "num_sanity_val_steps": check_int(
                "num_sanity_val_steps", self.num_sanity_val_steps, -1, "an int >= 0, or -1 (every validation batch)"
            ),
            "reload_dataloaders_every_n_epochs": check_int(
                "reload_dataloaders_every_n_epochs", self.reload_dataloaders_every_n_epochs, 0, "an int >= 0 (0: never)"
            ),
            "log_every_n_steps": check_int("log_every_n_steps", self.log_every_n_steps, 1, "an int >= 1"),
            "accumulate_grad_batches": check_int(
                "accumulate_grad_batches", self.accumulate_grad_batches, 1, "an int >= 1"
            ),
            "fast_dev_run": _fast_dev_run(self.fast_dev_run),
            "deterministic": _deterministic(self.deterministic),
            "benchmark": None if self.benchmark is None else check_bool("benchmark", self.benchmark),
            "logger": _check_logger(self.logger),
            "callbacks": _check_callbacks(self.callbacks),
            "enable_progress_bar": check_bool("enable_progress_bar", self.enable_progress_bar),
            "enable_checkpointing": check_bool("enable_checkpointing", self.enable_checkpointing),
            "enable_model_summary": check_bool("enable_model_summary", self.enable_model_summary),
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


def warn_if_resumed_past_limits(
    max_steps: int, max_epochs: int | None, global_step: int, current_epoch: int, ckpt_path: object
) -> None:
    """A resumed run whose counters already reach ``max_steps``/``max_epochs`` trains nothing: say so, rather
    than end ``fit`` silently (Lightning reports the same stop)."""
    reached = []
    if max_steps != -1 and global_step >= max_steps:
        reached.append(f"global_step={global_step} >= max_steps={max_steps}")
    if max_epochs is not None and current_epoch >= max_epochs:
        reached.append(f"epoch {current_epoch} >= max_epochs={max_epochs}")
    if reached:
        warn(
            f"fit(ckpt_path={str(ckpt_path)!r}) resumes a run that is already finished ({'; '.join(reached)}):"
            " no training step will run. Raise max_steps / max_epochs to train further.",
            PrecWarning,
        )


def warn_empty_epoch(max_steps: int) -> None:
    """An epoch without a batch under ``max_steps`` alone would repeat forever: ``fit`` stops and says why."""
    warn(
        f"fit() stopped: the training loader gave no batch in an epoch, so max_steps={max_steps} could never be"
        " reached (no max_epochs is set). Check the loader: an empty dataset, or drop_last=True with fewer samples"
        " than batch_size.",
        PrecWarning,
    )


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


def _max_steps(value: object) -> int:
    if value is None:
        return -1  # as in Lightning 1.x: no step limit
    return check_int("max_steps", value, -1, "an int >= 0, or -1 / None for no step limit")


def _val_check_interval(value: object) -> int | float | None:
    interval = check_limit("val_check_interval", value)
    if interval == 0:
        raise ConfigurationError("val_check_interval=0 would never validate; pass None for end-of-epoch only.")
    return interval


def _fast_dev_run(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    return check_int("fast_dev_run", value, 0, "a bool or an int >= 0 (batches per stage; 0/False: off)")


def _deterministic(value: object) -> bool | Literal["warn"] | None:
    if value is None or isinstance(value, bool) or (isinstance(value, str) and value == "warn"):
        return value  # type: ignore[return-value]
    raise ConfigurationError(f"deterministic={show(value)} must be True, False, 'warn' or None (leave torch as is).")


def _check_strategy(value: object) -> str | Strategy:
    if isinstance(value, Strategy):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"strategy={show(value)} must be a strategy name such as 'auto', 'single', 'ddp' or 'fsdp',"
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
            f"plugins= takes prec.Precision instances (one, or a list of one); got {show(others)}."
        )
    if len(items) > 1:
        raise ConfigurationError(f"plugins= holds {len(items)} precisions; pass one: {show(items)}.")
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
            f"callbacks={show(value)} must be a prec.Callback, a list of them, or None; got {type(value).__name__}."
        )
    items = tuple(value)
    others = [item for item in items if not isinstance(item, Callback)]
    if others:
        raise ConfigurationError(f"callbacks must be prec.Callback instances, got {show(others)}.")
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
    return check_path("default_root_dir", value, none="the current directory")  # type: ignore[return-value]


def check_ckpt_path(stage: str, value: object) -> str | Path | None:
    """``fit``/``validate``/``test``/``predict``'s ``ckpt_path``, checked at the call: ``None``, ``"best"``,
    ``"last"`` or a path (a file the run reads later; whether it exists and fits is the checkpoint's own check)."""
    if isinstance(value, str) and value in ("best", "last"):
        return value
    return check_path(f"{stage}(ckpt_path)", value, none="start fresh; 'best' or 'last': a ModelCheckpoint's")


def _nonfinite(value: object) -> Any:
    from prec.precision.guard import NonFinitePolicy

    return NonFinitePolicy.coerce(value)  # type: ignore[arg-type]


def _precision_options(value: object) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"precision_options={show(value)} must be a dict of option names to values, e.g. {{'init_scale': 1024}}."
        )
    keys = [key for key in value if not isinstance(key, str)]
    if keys:
        raise ConfigurationError(f"precision_options keys must be option names (str); got {show(keys)}.")
    return MappingProxyType(dict(value))
