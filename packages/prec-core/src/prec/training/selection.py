"""Which accelerator, precision, devices and strategy a Trainer runs with: its checked arguments looked up in the
registry, in that order (each choice depends on the ones before it).

Kept apart from :mod:`prec.trainer`: the Trainer holds what was chosen, this module says how it is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prec.errors import ConfigurationError
from prec.strategies.base import Strategy

if TYPE_CHECKING:
    from prec.accelerator import Accelerator
    from prec.plugin.registry import Registry
    from prec.precision import Precision
    from prec.training.config import TrainerConfig

__all__ = ["TrainerParts", "select_parts"]


@dataclass(frozen=True)
class TrainerParts:
    """What :func:`select_parts` chose for one Trainer."""

    accelerator: Accelerator
    precision: Precision
    devices: list[int]
    strategy: Strategy
    #: Why ``precision="auto"`` chose what it chose (``None`` when a precision was given).
    auto_precision_reason: str | None


def select_parts(config: TrainerConfig, registry: Registry) -> TrainerParts:
    """The accelerator, then the precision for it (with the config's non-finite policy), the devices, and the
    strategy that runs that precision on them."""
    accelerator = registry.select_accelerator(config.accelerator)
    precision, reason = _select_precision(
        registry, accelerator, config.precision, config.plugins, config.precision_options
    )
    precision.set_nonfinite_policy(config.nonfinite)
    devices = accelerator.parse_devices(config.devices)
    strategy = _select_strategy(registry, config.strategy, accelerator, devices, precision, config.num_nodes)
    return TrainerParts(accelerator, precision, devices, strategy, reason)


def _select_precision(
    registry: Registry, accelerator: Accelerator, precision: Any, plugins: tuple[Precision, ...], options: Any
) -> tuple[Precision, str | None]:
    """An instance from ``plugins=`` as given (if it fits the accelerator), else the registry's lookup. The
    configuration already refused two precisions, or a name together with an instance."""
    if plugins:
        (instance,) = plugins
        problem = instance.incompatibility(accelerator)
        if problem is not None:
            raise ConfigurationError(f"{problem}. Build it with prec.get_precision(name, {accelerator.name!r}).")
        return instance, None
    return registry.select_precision(precision, accelerator, options)


def _select_strategy(
    registry: Registry,
    strategy: str | Strategy,
    accelerator: Accelerator,
    devices: list[int],
    precision: Precision,
    num_nodes: int,
) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise ConfigurationError(f"strategy={strategy!r} must be a strategy name such as 'auto' or 'ddp'.")
    processes = len(devices) * num_nodes
    name = strategy
    if strategy == "auto":
        name = accelerator.single_device_strategy if processes == 1 else "ddp"
    elif strategy == "single" and processes > 1:
        raise ConfigurationError(
            f"strategy='single' runs one process, but devices={devices} and num_nodes={num_nodes} ask for"
            f" {processes}. Use strategy='ddp' or devices=1."
        )
    entry = registry.strategy_entry(name)
    registry.check_strategy(entry, accelerator.name, precision.name)
    return entry.factory(accelerator=accelerator, devices=devices, precision=precision, num_nodes=num_nodes)
