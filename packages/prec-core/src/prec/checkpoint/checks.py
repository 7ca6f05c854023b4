"""Checks of a loaded checkpoint's contents against the run it is loaded into.

A hand-edited or mismatched checkpoint must fail at load time, naming the file and the part, not later with a
``TypeError`` in a comparison or a ``KeyError`` at the first optimizer step. Each check takes the file's path, the
saved part and, where it applies, the live object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from prec.errors import CheckpointError

__all__ = [
    "LIGHTNING_KEY",
    "check_foreign_checkpoint",
    "check_layout",
    "check_finite_optimizer_state",
    "check_finite_weights",
    "check_model_state",
    "is_lightning_checkpoint",
    "load_optimizer_state",
]

LIGHTNING_KEY = "pytorch-lightning_version"
_LISTED = 8
# Built-in optimizers whose per-parameter state tensors all have their parameter's shape.
_ELEMENTWISE = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.RMSprop,
    torch.optim.Rprop,
    torch.optim.ASGD,
)
_PARTS: dict[str, type | tuple[type, ...]] = {
    "state_dict": Mapping,
    "optimizer_states": (list, tuple),
    "lr_schedulers": (list, tuple),
    "precision": Mapping,
    "precision_state": Mapping,
    "loops": Mapping,
    "callbacks": Mapping,
    "rng": (Mapping, type(None)),
}


def _names(items: list[str]) -> str:
    return ", ".join(items[:_LISTED]) + (" …" if len(items) > _LISTED else "")


def is_lightning_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    return LIGHTNING_KEY in checkpoint


def check_layout(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Every top-level part prec reads has the type prec reads it as (called by ``read_checkpoint``)."""
    if is_lightning_checkpoint(checkpoint):
        parts = {name: _PARTS[name] for name in ("state_dict", "optimizer_states", "lr_schedulers")}
    else:
        parts = _PARTS
    for name, kind in parts.items():
        if name in checkpoint and not isinstance(checkpoint[name], kind):
            raise CheckpointError(
                f"checkpoint {path}: {name!r} is of type {type(checkpoint[name]).__name__}, not a"
                f" {'list' if kind == (list, tuple) else 'dict'}; the file was edited or not written by prec."
            )
    bad_keys = [repr(key) for key in checkpoint["state_dict"] if not isinstance(key, str)]
    if bad_keys:
        raise CheckpointError(f"checkpoint {path}: 'state_dict' has keys that are not names: {_names(bad_keys)}.")
    for index, state in enumerate(checkpoint.get("optimizer_states", ())):
        if not isinstance(state, Mapping) or not isinstance(state.get("state"), Mapping):
            raise CheckpointError(f"checkpoint {path}: optimizer_states[{index}] is not an optimizer state_dict.")
        groups = state.get("param_groups")
        if not isinstance(groups, (list, tuple)) or not all(
            isinstance(group, Mapping) and isinstance(group.get("params"), (list, tuple)) for group in groups
        ):
            raise CheckpointError(f"checkpoint {path}: optimizer_states[{index}]['param_groups'] is malformed.")
    loops = checkpoint.get("loops", {}) if not is_lightning_checkpoint(checkpoint) else {}
    for counter in ("epoch", "global_step", "batches_seen"):
        value = loops.get(counter, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"checkpoint {path}: loops[{counter!r}] is {value!r}, not a non-negative int.")


def _nonfinite(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and not bool(torch.isfinite(value).all())
    )


def check_finite_weights(path: Path, saved: Mapping[str, Any], parameter_names: set[str]) -> None:
    """The saved weights of the module's parameters are finite. Loaded NaN/inf weights would make every later
    step's gradients non-finite, and the non-finite guard would skip them all, blaming the gradients. Buffers are
    not checked: a mask of ``-inf`` is a legitimate buffer."""
    bad = [key for key in sorted(parameter_names) if key in saved and _nonfinite(saved[key])]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: the weights {_names(bad)} hold inf/NaN; every step from them would be skipped."
            " Resume from an earlier checkpoint (prec refuses to load non-finite weights)."
        )


def check_finite_optimizer_state(
    path: Path,
    index: int,
    saved: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    name_of: Callable[[torch.Tensor, str], str],
) -> None:
    """The saved per-parameter state of optimizer ``index`` is finite: NaN in Adam's ``exp_avg_sq`` with finite
    weights loads silently, and the first step writes NaN into every weight it updates. ``name_of(param,
    fallback)``: the model's name of a live parameter."""
    live = [param for group in optimizer.param_groups for param in group["params"]]
    saved_ids = [saved_id for group in saved["param_groups"] for saved_id in group["params"]]
    by_saved_id = dict(zip(saved_ids, live, strict=False))
    bad = []
    for saved_id, entry in saved["state"].items():
        if not isinstance(entry, Mapping):
            continue
        for key, value in entry.items():
            if _nonfinite(value):
                param = by_saved_id.get(saved_id)
                fallback = f"parameter {saved_id}"
                bad.append(f"{key!r} of {name_of(param, fallback) if param is not None else fallback}")
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: optimizer {index} ({type(optimizer).__name__}) state {_names(bad)} holds inf/NaN;"
            " the first step would write NaN into the weights. Resume from an earlier checkpoint, or load the"
            " weights alone and start the optimizer afresh."
        )


def check_model_state(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Each entry the module holds as a tensor is a tensor in the checkpoint (shapes are checked by the loader)."""
    wrong = [
        f"{key} ({type(saved[key]).__name__})"
        for key, value in current.items()
        if key in saved and isinstance(value, torch.Tensor) and not isinstance(saved[key], torch.Tensor)
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path}: 'state_dict' holds non-tensors where the model has tensors: {_names(wrong)}."
        )


def load_optimizer_state(path: Path, index: int, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.load_state_dict(saved)`` after checking that it fits; the optimizer is unchanged on failure.

    Checked: the number of parameter groups and of parameters in each; per-parameter state tensors shaped like
    their parameter (torch's element-wise optimizers); and that the state was written by this kind of optimizer
    (its hyper-parameters: Adam's state in SGD would load and then fail at the first step with a KeyError)."""
    where = f"checkpoint {path}: optimizer {index} ({type(optimizer).__name__})"
    groups = list(saved["param_groups"])
    live = optimizer.param_groups
    if len(groups) != len(live):
        raise CheckpointError(
            f"{where} has {len(live)} parameter groups, the checkpoint {len(groups)}: configure_optimizers() must"
            " build the same groups as the run that saved it."
        )
    for number, (group, target) in enumerate(zip(groups, live, strict=True)):
        if len(group["params"]) != len(target["params"]):
            raise CheckpointError(
                f"{where}: parameter group {number} has {len(target['params'])} parameters, the checkpoint"
                f" {len(group['params'])}."
            )
    _check_kind(where, groups, live)
    if isinstance(optimizer, _ELEMENTWISE):
        _check_state_shapes(where, saved["state"], groups, live)
    before = optimizer.state_dict()
    expected = [set(group) - {"params"} for group in live]
    try:
        optimizer.load_state_dict(dict(saved))
    except (ValueError, KeyError, RuntimeError, TypeError) as error:
        optimizer.load_state_dict(before)
        raise CheckpointError(f"{where} does not fit the saved state: {type(error).__name__}: {error}") from error
    lost = sorted(
        {key for keys, group in zip(expected, optimizer.param_groups, strict=True) for key in keys - set(group)}
    )
    if lost:
        optimizer.load_state_dict(before)
        raise CheckpointError(
            f"{where}: the saved state lacks the hyper-parameters {_names(lost)} this optimizer needs."
        )


def _check_kind(where: str, groups: list[Any], live: list[dict[str, Any]]) -> None:
    saved_keys = set().union(*(set(group) for group in groups)) - {"params", "param_names"}
    live_keys = set().union(*(set(group) for group in live)) - {"params", "param_names"}
    missing, foreign = sorted(live_keys - saved_keys), sorted(saved_keys - live_keys)
    if missing and foreign:
        raise CheckpointError(
            f"{where}: the checkpoint's optimizer state was written by a different optimizer (it has"
            f" {_names(foreign)}; this one needs {_names(missing)}). Resume with the optimizer that saved it."
        )


def _check_state_shapes(where: str, state: Mapping[Any, Any], groups: list[Any], live: list[dict[str, Any]]) -> None:
    params = {
        saved_id: param
        for group, target in zip(groups, live, strict=True)
        for saved_id, param in zip(group["params"], target["params"], strict=True)
    }
    unknown = [repr(key) for key in state if key not in params]
    if unknown:
        raise CheckpointError(f"{where}: state for parameters no group lists: {_names(unknown)}.")
    for saved_id, entry in state.items():
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"{where}: the state of parameter {saved_id} is a {type(entry).__name__}.")
        shape = tuple(params[saved_id].shape)
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                raise CheckpointError(
                    f"{where}: state {name!r} of parameter {saved_id} has shape {tuple(value.shape)}, the parameter"
                    f" {shape}."
                )


def check_foreign_checkpoint(path: Path, checkpoint: Mapping[str, Any], stage: str) -> None:
    """A checkpoint written by PyTorch Lightning: its weights load, its loop state does not.

    ``validate``/``test``/``predict`` only need the weights, which load as they are. ``fit`` would resume
    from Lightning's loop state, which prec cannot read exactly (its progress counters, data position, RNG and
    callback states have Lightning's own layout), so rather than silently restarting at epoch 0 this refuses, and
    says how to start a new run from the weights."""
    if not is_lightning_checkpoint(checkpoint) or stage != "fit":
        return
    version, epoch, step = checkpoint[LIGHTNING_KEY], checkpoint.get("epoch", "?"), checkpoint.get("global_step", "?")
    raise CheckpointError(
        f"checkpoint {path} was written by PyTorch Lightning {version} (epoch {epoch}, global step {step}). prec"
        " can load its weights (validate/test/predict with ckpt_path= work), but cannot resume its training"
        " exactly: Lightning's loop progress, data position, RNG and callback states are stored in Lightning's"
        " own format. To train on from these weights as a new run, load them before fit():"
        f" model.load_state_dict(prec.checkpoint.io.read_checkpoint({str(path)!r})['state_dict']), then call fit()"
        " without ckpt_path."
    )
