"""Freeze and unfreeze parts of a model during ``fit`` (Lightning's ``BaseFinetuning`` helpers and callback).

Subclass :class:`BaseFinetuning`, freeze in ``freeze_before_training`` and unfreeze (adding the parameters to the
optimizer) in ``finetune_function``, called at the start of every training epoch. Batch-norm layers stay
trainable when frozen with ``train_bn=True`` (the default), as in Lightning.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from prec._warnings import warn
from prec.errors import ConfigurationError, PrecWarning
from prec.model.callback import Callback
from prec.training.checks import check_bool, check_number, show

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

Modules = torch.nn.Module | Iterable[Any]


def check_modules(argument: str, modules: object) -> Modules:
    """A module, a ModuleDict, or an iterable (list, tuple, generator) of them, nested as deep as you like; a
    generator is read once here and returned as a list."""
    if isinstance(modules, torch.nn.Module):
        return modules
    if isinstance(modules, (str, bytes, Mapping, torch.Tensor)) or not isinstance(modules, Iterable):
        raise ConfigurationError(
            f"{argument}={show(modules)} must be a torch.nn.Module or a list of them; got {type(modules).__name__}."
        )
    items = list(modules)
    for item in items:
        check_modules(argument, item)
    return items


def flatten_modules(modules: Modules) -> list[torch.nn.Module]:
    """The leaf modules (and parents holding parameters of their own) of a module, list or ModuleDict."""
    if isinstance(modules, torch.nn.ModuleDict):
        modules = modules.values()
    if isinstance(modules, torch.nn.Module):
        candidates = list(modules.modules())
    else:
        candidates = [leaf for module in modules for leaf in flatten_modules(module)]
    return [module for module in candidates if not list(module.children()) or module._parameters]


def filter_params(
    modules: Modules, train_bn: bool = True, requires_grad: bool = True
) -> Generator[torch.nn.Parameter, None, None]:
    """The parameters of ``modules`` whose ``requires_grad`` is ``requires_grad`` (batch norms' only with
    ``train_bn``)."""
    for module in flatten_modules(modules):
        if isinstance(module, _BatchNorm) and not train_bn:
            continue
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad == requires_grad:
                yield parameter


def make_trainable(modules: Modules) -> None:
    """Unfreeze ``modules``: ``requires_grad=True`` and batch norms tracking running statistics again."""
    for module in flatten_modules(modules):
        if isinstance(module, _BatchNorm):
            module.track_running_stats = True
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad = True


def freeze_module(module: torch.nn.Module) -> None:
    """Freeze one module's own parameters (a batch norm also stops tracking running statistics)."""
    if isinstance(module, _BatchNorm):
        module.track_running_stats = False
    for parameter in module.parameters(recurse=False):
        parameter.requires_grad = False


def freeze(modules: Modules, train_bn: bool = True) -> None:
    """Freeze ``modules``; with ``train_bn`` their batch norms stay trainable."""
    modules = check_modules("freeze(modules)", modules)
    train_bn = check_bool("freeze(train_bn)", train_bn)
    for module in flatten_modules(modules):
        if isinstance(module, _BatchNorm) and train_bn:
            make_trainable(module)
        else:
            freeze_module(module)


def filter_on_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> list[Any]:
    """``params`` without those ``optimizer`` already holds (by identity), with a warning when any were."""
    held = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    params = list(params)
    kept = [parameter for parameter in params if id(parameter) not in held]
    if len(kept) != len(params):
        warn(
            f"{len(params) - len(kept)} parameters to unfreeze are already in the optimizer and are skipped: build"
            " the optimizer from the trainable parameters only, e.g. filter(lambda p: p.requires_grad,"
            " self.parameters()).",
            PrecWarning,
        )
    return kept


def unfreeze_and_add_param_group(
    modules: Modules,
    optimizer: torch.optim.Optimizer,
    lr: float | None = None,
    initial_denom_lr: float = 10.0,
    train_bn: bool = True,
) -> None:
    """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new group, at ``lr`` (default: the
    first group's learning rate divided by ``initial_denom_lr``). Every argument is checked before anything is
    unfrozen, so a mistake leaves the model as it was."""
    owner = "unfreeze_and_add_param_group"
    modules = check_modules(f"{owner}(modules)", modules)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigurationError(
            f"{owner}(optimizer={show(optimizer)}) must be a torch.optim.Optimizer; got {type(optimizer).__name__}."
        )
    lr = check_number(f"{owner}(lr)", lr, optional=True, finite=True)
    if lr is not None and lr < 0:
        raise ConfigurationError(f"{owner}(lr={lr}) must be >= 0, or None (the first group's lr / initial_denom_lr).")
    denominator = check_number(f"{owner}(initial_denom_lr)", initial_denom_lr, finite=True)
    if not denominator or denominator <= 0:
        raise ConfigurationError(f"{owner}(initial_denom_lr={initial_denom_lr!r}) must be a finite number > 0.")
    train_bn = check_bool(f"{owner}(train_bn)", train_bn)
    make_trainable(modules)
    group_lr = optimizer.param_groups[0]["lr"] if lr is None else lr
    denominator = denominator if lr is None else 1.0
    params = filter_on_optimizer(optimizer, filter_params(modules, train_bn=train_bn, requires_grad=True))
    if params:
        optimizer.add_param_group({"params": params, "lr": group_lr / denominator})


class BaseFinetuning(Callback):
    """A callback that freezes before training and unfreezes on a schedule you write.

    Its state (the parameter groups each optimizer had, by parameter name) is saved in checkpoints, so a resumed
    run rebuilds the groups ``finetune_function`` had added before the optimizer state is loaded into them.
    """

    flatten_modules = staticmethod(flatten_modules)
    filter_params = staticmethod(filter_params)
    make_trainable = staticmethod(make_trainable)
    freeze_module = staticmethod(freeze_module)
    freeze = staticmethod(freeze)
    filter_on_optimizer = staticmethod(filter_on_optimizer)
    unfreeze_and_add_param_group = staticmethod(unfreeze_and_add_param_group)

    def __init__(self) -> None:
        self.optimizer_groups: dict[int, list[dict[str, Any]]] = {}
        self.restarting = False

    def freeze_before_training(self, module: TrainingModule) -> None:
        """Freeze what should start frozen (called in ``setup``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(module).")

    def finetune_function(self, module: TrainingModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Unfreeze on your schedule (called at each training epoch's start, once per optimizer)."""
        raise NotImplementedError(f"{type(self).__name__} must implement finetune_function(module, epoch, optimizer).")

    @override
    def setup(self, trainer: TrainerView, module: TrainingModule, stage: str) -> None:
        self.freeze_before_training(module)

    @override
    def on_fit_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        if not self.restarting:
            return
        self.restore_param_groups(trainer, module)
        self.restarting = False

    def restore_param_groups(self, trainer: TrainerView, module: TrainingModule) -> None:
        """Rebuild each optimizer's parameter groups from the saved state (parameter names back to parameters)."""
        parameters = dict(module.named_parameters())
        for index, optimizer in enumerate(trainer.optimizers):
            groups = self.optimizer_groups.get(index)
            if groups is None:
                continue
            optimizer = getattr(optimizer, "optimizer", optimizer)
            optimizer.param_groups = [
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": [parameters[n] for n in group["params"]],
                }
                for group in groups
            ]

    @override
    def on_train_epoch_start(self, trainer: TrainerView, module: TrainingModule) -> None:
        names = {parameter: name for name, parameter in module.named_parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            optimizer = getattr(optimizer, "optimizer", optimizer)
            before = len(optimizer.param_groups)
            self.finetune_function(module, trainer.current_epoch, optimizer)
            groups = optimizer.param_groups
            if index not in self.optimizer_groups:
                self.optimizer_groups[index] = [_named_group(group, names) for group in groups]
            elif before != len(groups):
                self.optimizer_groups[index].extend(_named_group(group, names) for group in groups[before:])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self.optimizer_groups}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restarting = True
        self.optimizer_groups = {int(k): v for k, v in state_dict.get("internal_optimizer_metadata", {}).items()}


def _named_group(group: dict[str, Any], names: dict[Any, str]) -> dict[str, Any]:
    """A parameter group with parameter names instead of tensors (a checkpoint stores no parameter twice)."""
    return {**{k: v for k, v in group.items() if k != "params"}, "params": [names[p] for p in group["params"]]}
