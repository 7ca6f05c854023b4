"""Checkpoints: what a run needs to resume exactly, written atomically, read with clear errors.

A checkpoint is a ``torch.save`` dict (loaded with ``weights_only=True``)::

    state_dict          the model's state (``strategy.module_state_dict``)
    optimizer_states    one ``state_dict()`` per optimizer, in ``configure_optimizers`` order
    lr_schedulers       one ``state_dict()`` per scheduler
    precision           {"name", "param_dtype", "parameter_dtypes": {tensor name: dtype}}  (metadata)
    precision_state     ``precision.state_dict()`` (the grad scaler under 16-mixed)
    loops               epoch, global_step, batches_seen in the epoch, RNG state at the epoch's start
    rng                 torch, Python and NumPy RNG states at save time
    callbacks           ``callback.state_dict()`` by ``state_key``
    prec_checksum       {"algorithm", "digest"} of everything above, added by ``atomic_save`` and verified (and
                        removed) by ``read_checkpoint`` (see ``prec.checkpoint.digest``)

Resume is exact for an unshuffled loader and for a shuffled ``DataLoader`` that draws from torch's global RNG:
mid-epoch, the loader is re-created from the RNG state of the epoch's start and the batches already seen are
fetched and dropped, so the rest of the epoch arrives in the same order. A loader with its own ``generator``
resumes in order only at an epoch boundary. The RNG state saved is global rank zero's: under a multi-process
strategy the other ranks resume from it too, so there resume is exact for weights and data order, not for each
rank's own random draws (dropout). Save at an optimizer-step boundary (``on_train_batch_end``,
``on_train_epoch_completed``): gradients being accumulated are not saved.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prec._warnings import warn
from prec.checkpoint.checks import (
    check_finite_optimizer_state,
    check_finite_weights,
    check_foreign_checkpoint,
    check_layout,
    check_model_state,
    load_optimizer_state,
)
from prec.checkpoint.io import STALE_TEMP_AGE_S, atomic_save, read_checkpoint, remove_stale_temporaries
from prec.errors import CheckpointError, PrecWarning
from prec.model.hparams import checkpoint_hparams, hparams_of

__all__ = [
    "STALE_TEMP_AGE_S",
    "atomic_save",
    "build_checkpoint",
    "capture_rng",
    "check_foreign_checkpoint",
    "check_layout",
    "check_model_state",
    "load_checkpoint",
    "load_optimizer_state",
    "read_checkpoint",
    "remove_stale_temporaries",
    "restore_rng",
]

if TYPE_CHECKING:
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView

CHECKPOINT_VERSION = 1
_LISTED = 8  # how many mismatched names an error message shows


# -- RNG ---------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """The global RNG states a training run draws from (torch CPU and, once initialised, CUDA; Python; NumPy)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, position, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached)
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in state:
        kind, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached))


# -- writing ----------------------------------------------------------------------------------------------
def build_checkpoint(trainer: TrainerView, model: TrainingModule, *, weights: bool = True) -> dict[str, Any]:
    """Collect the checkpoint dict (on every process: a sharded strategy gathers the state here). Without
    ``weights`` the model's and optimizers' states are left out, for a strategy that writes them in its own
    layout (:meth:`prec.Strategy.save_checkpoint`)."""
    precision = trainer.precision_plugin
    local = model.state_dict()  # this process's view: dtypes for the metadata, no gathering
    checkpoint: dict[str, Any] = {
        "prec_checkpoint_version": CHECKPOINT_VERSION,
        "precision": {
            "name": precision.name,
            "param_dtype": str(precision.param_dtype),
            "parameter_dtypes": {k: str(v.dtype) for k, v in local.items() if isinstance(v, torch.Tensor)},
        },
        "lr_schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        "precision_state": precision.state_dict(),
        "loops": trainer.state.loop_state(),
        "epoch": trainer.current_epoch,  # Lightning's top-level counters, for code that reads them (read: loops)
        "global_step": trainer.global_step,
        "rng": capture_rng(),
        "callbacks": {callback.state_key: callback.state_dict() for callback in trainer.callbacks},
    }
    if weights:
        checkpoint["state_dict"] = trainer.strategy.module_state_dict(model)
        checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state_dict(o) for o in trainer.optimizers]
    hparams = hparams_of(model)
    if hparams:
        checkpoint["hyper_parameters"] = checkpoint_hparams(hparams)
    if trainer.datamodule is not None:
        checkpoint["datamodule"] = trainer.datamodule.state_dict()
    for callback in trainer.callbacks:
        callback.on_save_checkpoint(trainer, model, checkpoint)
    model.on_save_checkpoint(checkpoint)
    return checkpoint


# -- reading -----------------------------------------------------------------------------------------------
def load_checkpoint(trainer: TrainerView, model: TrainingModule, path: str | os.PathLike[str], stage: str) -> None:
    """Restore ``path`` into a set-up run: the model always; optimizers, schedulers, the precision's state,
    loop counters, RNG and callbacks for ``fit``."""
    path = Path(path)
    from prec.checkpoint.sharded import is_sharded_checkpoint

    if is_sharded_checkpoint(path):  # weights and optimizer states in the strategy's own layout
        checkpoint = trainer.strategy.load_checkpoint(path, model, trainer.optimizers if stage == "fit" else [])
        saved_precision = checkpoint.get("precision", {}).get("name", "unknown")
        sharded = True
    else:
        checkpoint = read_checkpoint(path)
        check_foreign_checkpoint(path, checkpoint, stage)
        saved_precision = checkpoint.get("precision", {}).get("name", "unknown")
        _load_model_state(trainer, model, checkpoint["state_dict"], path, saved_precision)
        sharded = False
    if stage == "fit":
        # Callback states first (Lightning's order): a finetuning callback restores the param groups it added
        # before the optimizer states that include them are loaded.
        states = checkpoint.get("callbacks", {})
        for callback in trainer.callbacks:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])
        for callback in trainer.callbacks:
            restore = getattr(callback, "restore_param_groups", None)
            if restore is not None:
                restore(trainer, model)
        _load_optimizers(trainer, checkpoint, path, sharded)
        _load_precision_state(trainer, checkpoint.get("precision_state", {}), path, saved_precision)
        trainer.state.restore_loop_state(checkpoint.get("loops", {}), checkpoint.get("rng"))
        if trainer.datamodule is not None and "datamodule" in checkpoint:
            trainer.datamodule.load_state_dict(checkpoint["datamodule"])
    for callback in trainer.callbacks:
        callback.on_load_checkpoint(trainer, model, checkpoint)
    model.on_load_checkpoint(checkpoint)


def _load_model_state(
    trainer: TrainerView, model: TrainingModule, saved: dict[str, Any], path: Path, saved_precision: str
) -> None:
    current = trainer.strategy.module_state_dict(model)
    check_model_state(path, saved, current)
    prefix = "_orig_mod."  # saved from a torch.compile wrapper by hand: the same module underneath
    if saved and all(key.startswith(prefix) for key in saved) and not any(key.startswith(prefix) for key in current):
        saved = {key[len(prefix) :]: value for key, value in saved.items()}
    check_finite_weights(path, saved, {name for name, _ in model.named_parameters()} & set(current))
    missing = [key for key in current if key not in saved]
    unexpected = [key for key in saved if key not in current]
    shapes = [
        f"{key} (checkpoint {tuple(saved[key].shape)}, model {tuple(current[key].shape)})"
        for key in current
        if key in saved and isinstance(saved[key], torch.Tensor) and saved[key].shape != current[key].shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{label}: {', '.join(names[:_LISTED])}{' …' if len(names) > _LISTED else ''}"
            for label, names in (
                (f"{len(missing)} missing keys", missing),
                (f"{len(unexpected)} unexpected keys", unexpected),
                (f"{len(shapes)} shape mismatches", shapes),
            )
            if names
        ]
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}; " + "; ".join(problems) + ".")
    casts: Counter[tuple[torch.dtype, torch.dtype]] = Counter()
    state = dict(saved)
    for key, value in saved.items():
        target = current[key]
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != target.dtype:
            casts[(value.dtype, target.dtype)] += 1
            state[key] = value.to(target.dtype)
    for (source, target), count in sorted(casts.items(), key=str):
        warn(
            f"checkpoint {path.name} was saved under precision {saved_precision!r}: casting {count} tensors from"
            f" {source} to {target} for {trainer.precision_plugin.name!r}.",
            PrecWarning,
        )
    trainer.strategy.load_module_state_dict(model, state)


def _load_optimizers(trainer: TrainerView, checkpoint: dict[str, Any], path: Path, sharded: bool) -> None:
    """Optimizer states (unless the strategy loaded them from a sharded checkpoint) and LR scheduler states."""
    for kind, saved, targets in (
        ("optimizer", checkpoint.get("optimizer_states", []), trainer.optimizers),
        ("LR scheduler", checkpoint.get("lr_schedulers", []), [c.scheduler for c in trainer.lr_scheduler_configs]),
    ):
        if kind == "optimizer" and sharded:
            continue
        if len(saved) != len(targets):
            raise CheckpointError(
                f"checkpoint {path} holds {len(saved)} {kind} states, but configure_optimizers() returned"
                f" {len(targets)} {kind}s."
            )
        for index, (state, target) in enumerate(zip(saved, targets, strict=True)):
            if kind == "optimizer":
                load_optimizer_state(path, index, state, target)
                check_finite_optimizer_state(path, index, state, target, trainer.precision_plugin.guard.name_of)
                continue
            try:
                target.load_state_dict(state)
            except (ValueError, KeyError, RuntimeError) as error:
                raise CheckpointError(
                    f"checkpoint {path}: {kind} {index} ({type(target).__name__}) does not fit the saved state: {error}"
                ) from error


#: What each ``master_weights`` mode keeps in ``precision_state`` beyond the skip counters.
_MASTER_STATE = {
    "fp32": "the float32 master weights (the weights as training kept them, small updates included)",
    "kahan": "the Kahan compensation buffers (the small updates bfloat16 weights could not hold)",
    "stochastic": "the stochastic-rounding generator state",
}


def _drop_master_state(precision: Any, saved: dict[str, Any], path: Path, saved_precision: str) -> dict[str, Any]:
    """A ``master_weights`` checkpoint resumed by a precision without master weights: say what is dropped."""
    mode = saved.get("master_weights")
    if mode is None or getattr(precision, "master_weights", None) is not None:
        return saved
    warn(
        f"checkpoint {path.name} was saved by {saved_precision!r} with master_weights={mode!r}; {precision.name!r}"
        f" has no master weights, so {_MASTER_STATE.get(mode, 'its state')} are dropped and training resumes from"
        " the 16-bit weights. Pass precision_options={'master_weights': " + repr(mode) + "} to keep them.",
        PrecWarning,
    )
    return {
        key: value
        for key, value in saved.items()
        if key not in ("master_weights", "masters", "compensation", "generator")
    }


def _load_precision_state(trainer: TrainerView, saved: dict[str, Any], path: Path, saved_precision: str) -> None:
    precision = trainer.precision_plugin
    saved = _drop_master_state(precision, saved, path, saved_precision)
    masters = [tensor for group in saved.get("masters", ()) for tensor in group]
    check_finite_weights(
        path, {f"masters[{i}]": t for i, t in enumerate(masters)}, {f"masters[{i}]" for i in range(len(masters))}
    )
    has_scaler = "scaler" in precision.state_dict()
    if "scaler" in saved and not has_scaler:
        scale = saved["scaler"].get("scale")
        warn(
            f"checkpoint {path.name} holds grad scaler state from {saved_precision!r} (loss scale {scale}), but"
            f" {precision.name!r} has no grad scaler: the scaler state is dropped.",
            PrecWarning,
        )
        saved = {key: value for key, value in saved.items() if key != "scaler"}
    elif has_scaler and "scaler" not in saved:
        warn(
            f"checkpoint {path.name} from {saved_precision!r} has no grad scaler state: {precision.name!r} starts"
            " a fresh grad scaler.",
            PrecWarning,
        )
    precision.load_state_dict(saved)
