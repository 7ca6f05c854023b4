"""LearningRateMonitor: log each optimizer's learning rate (and momentum) as training goes, Lightning's names.

Names: ``lr-{Optimizer}`` (``lr-SGD``), ``-{n}`` for the n-th further optimizer of the same class, ``/pg{i}`` or
``/{group name}`` for several parameter groups, the scheduler config's ``name`` when it has one, and
``lr-SGD-momentum`` (``betas[0]`` for Adam-style optimizers) with ``log_momentum``. Reading a learning rate is a
Python float from ``param_groups``: no device sync.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from prec.errors import ConfigurationError
from prec.model.callback import Callback
from prec.training.checks import check_bool

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView


class LearningRateMonitor(Callback):
    """Log learning rates to the Trainer's logger(s).

    Args:
        logging_interval: ``"step"`` (before every optimizer step), ``"epoch"`` (at each epoch's start) or
            ``None``: each scheduler at its own interval, optimizers without a scheduler at both (as in Lightning).
        log_momentum: also log momentum (``betas[0]`` for Adam-style optimizers; 0 where there is none).
        log_weight_decay: also log each group's weight decay.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval is not None and not (
            isinstance(logging_interval, str) and logging_interval in ("step", "epoch")
        ):
            raise ConfigurationError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) must be 'step', 'epoch' or None."
            )
        self.logging_interval = logging_interval
        self.log_momentum = check_bool("LearningRateMonitor(log_momentum)", log_momentum)
        self.log_weight_decay = check_bool("LearningRateMonitor(log_weight_decay)", log_weight_decay)
        #: Every value logged, by name (for inspection and tests).
        self.lrs: dict[str, list[float]] = {}
        #: The last momentum and weight decay logged, by logged name (``lr-SGD-momentum`` …), as in Lightning.
        self.last_momentum_values: dict[str, float] = {}
        self.last_weight_decay_values: dict[str, float] = {}

    @override
    def on_train_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        if not _loggers(trainer):
            raise ConfigurationError(
                "LearningRateMonitor needs a logger: Trainer(logger=False) leaves it nowhere to write."
            )
        self.lrs = {name: [] for names, _ in self._named_optimizers(trainer) for name in names}

    @override
    def on_train_batch_start(self, trainer: TrainerView, module: TrainingModule, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        every = getattr(trainer, "log_every_n_steps", 1) or 1
        if (trainer.global_step + 1) % every and not trainer.should_stop:
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    @override
    def on_train_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def stats(self, trainer: TrainerView, interval: str = "any") -> dict[str, float]:
        """The values due at ``interval`` (``"step"``, ``"epoch"`` or ``"any"``), by logged name."""
        stats: dict[str, float] = {}
        for names, (optimizer, config_interval) in self._named_optimizers(trainer):
            if config_interval is not None and interval not in (config_interval, "any"):
                continue
            use_betas = "betas" in optimizer.defaults
            for group, name in zip(optimizer.param_groups, names, strict=False):
                stats[name] = float(group["lr"])
                if self.log_momentum:
                    momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                    stats[f"{name}-momentum"] = float(momentum)
                if self.log_weight_decay:
                    stats[f"{name}-weight_decay"] = float(group.get("weight_decay", 0))
        return stats

    def _log(self, trainer: TrainerView, interval: str) -> None:
        stats = self.stats(trainer, interval)
        if not stats:
            return
        for name, value in stats.items():
            if name.endswith("-momentum"):
                self.last_momentum_values[name] = value
            elif name.endswith("-weight_decay"):
                self.last_weight_decay_values[name] = value
            else:
                self.lrs.setdefault(name, []).append(value)
        trainer.state.metrics.update_callback_metrics(stats)  # monitorable, as in Lightning (lr-SGD)
        for logger in _loggers(trainer):
            if hasattr(logger, "log_metrics"):
                logger.log_metrics(dict(stats), step=trainer.global_step)
            else:
                logger.log_row(dict(stats), trainer.global_step, trainer.current_epoch)

    def _named_optimizers(self, trainer: TrainerView) -> list[tuple[list[str], tuple[Any, str | None]]]:
        """``(names per param group, (optimizer, scheduler interval or None))``: scheduled optimizers first."""
        named: list[tuple[list[str], tuple[Any, str | None]]] = []
        seen: list[Any] = []
        counts: defaultdict[type, int] = defaultdict(int)
        for config in trainer.lr_scheduler_configs:
            optimizer = _unwrap(getattr(config, "optimizer", None) or config.scheduler.optimizer)
            given = getattr(config, "name", None)
            named.append((self._names(optimizer, given, counts), (optimizer, config.interval)))
            seen.append(optimizer)
        for optimizer in map(_unwrap, trainer.optimizers):
            if any(optimizer is other for other in seen):
                continue
            named.append((self._names(optimizer, None, counts), (optimizer, None)))
            seen.append(optimizer)
        return named

    @staticmethod
    def _names(optimizer: torch.optim.Optimizer, given: str | None, counts: defaultdict[type, int]) -> list[str]:
        kind = type(optimizer)
        name = given
        if name is None:
            counts[kind] += 1
            name = f"lr-{kind.__name__}" + (f"-{counts[kind] - 1}" if counts[kind] > 1 else "")
        groups = optimizer.param_groups
        labels = [group.get("name", f"pg{index}") for index, group in enumerate(groups, start=1)]
        if len(set(labels)) != len(labels):
            raise ConfigurationError(f"{name}: parameter groups of one optimizer need distinct names, got {labels}.")
        if len(groups) > 1:
            return [f"{name}/{label}" for label in labels]
        return [f"{name}/{groups[0]['name']}" if groups[0].get("name") else name]


def _unwrap(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)


def _loggers(trainer: TrainerView) -> list[Any]:
    """The Trainer's loggers: ``trainer.loggers`` where it exists, else ``[trainer.logger]`` (or none)."""
    loggers = getattr(trainer, "loggers", None)
    if loggers is not None:
        return list(loggers)
    return [trainer.logger] if trainer.logger is not None else []
