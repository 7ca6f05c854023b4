"""Sharded checkpoints for FSDP with ``torch.distributed.checkpoint`` (DCP): no rank ever holds the full model.

A sharded checkpoint is a directory::

    .metadata, __<rank>_0.distcp   DCP's files: model and optimizer states, each rank writing its own shards
    extras/rank<r>.pt              rank r's own state (loop counters, RNG, precision/scaler state ...), its
                                   DTensors (float32 copies, compensation) as plain local shards
    prec_sharded.json              format version, world size, and a digest of every file above
                                   (:mod:`prec.checkpoint.sharded_manifest`)

It is written atomically: every rank writes into ``.<name>.tmp-<id>`` next to ``path``; when all are done, global
rank zero writes the manifest and swaps the directory in with two renames (``path`` -> ``path.old``, the new one ->
``path``). A save killed at any moment leaves the previous checkpoint readable: at ``path``, or, killed between the
two renames, at ``path.old``, which :func:`load_sharded` falls back to. On multi-node jobs ``path`` must be on a
filesystem every node sees (as DCP's own writer requires).

Model and optimizer states go through ``torch.distributed.checkpoint.state_dict.get_state_dict`` /
``set_state_dict``, so their keys are the user's module's parameter names (the same as in a single process), and
:func:`export_full_checkpoint` turns a sharded checkpoint into prec's single-file format offline, in one process.

What loading a sharded directory trusts and checks (:func:`load_sharded`, :func:`export_full_checkpoint`, and so
``fit/validate/test(ckpt_path=directory)`` under FSDP): no code from the directory ever runs. ``.metadata`` is
unpickled with an allow-list of exactly the classes DCP writes there, every byte item and every ``extras/`` file
with ``torch.load(..., weights_only=True)``, and tensors as DCP always did (``weights_only=True``); anything else
is a :class:`prec.CheckpointError` naming the file or the stored value. Before any of that, rank zero accounts
for every file: one the manifest does not list, a listed one that is missing, a symbolic link, or a name outside
the directory is refused, and each file must match its digest. The digests detect damage, not tampering (the
manifest is plain JSON that whoever can write the directory can rewrite); what a tampered directory can still do
is hold different weights and plain values, never run code. The metadata's pointers are checked too: every
stored item lies inside a listed shard file, and no declared tensor is larger than the shard files together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from prec._warnings import warn
from prec.checkpoint.sharded_manifest import (
    BACKUP_SUFFIX,
    MANIFEST,
    SHARDED_FORMAT,
    is_sharded_checkpoint,
    listed_files,
    problem_with,
    read_manifest,
    readable,
    write_manifest,
)
from prec.checkpoint.sharded_reader import SafeReader, raise_checkpoint_error, read_whole
from prec.cluster.dtensor import LAYOUT_KEY, assemble_full, localize, with_full_leaves
from prec.errors import CheckpointError, PrecWarning

#: ``optimizer_view(module)``: a context in which ``module``'s parameters are the tensors the optimizers step
#: (``Precision.checkpoint_parameters``): DCP names optimizer state by the module's parameters, found by identity.
OptimizerView = Callable[[torch.nn.Module], contextlib.AbstractContextManager[None]]
__all__ = [
    "MANIFEST",
    "SHARDED_FORMAT",
    "export_full_checkpoint",
    "is_sharded_checkpoint",
    "load_full_into_sharded",
    "load_sharded",
    "name_keyed_optimizer_state",
    "save_sharded",
    "split_optimizer_state",
]


_LISTED = 8


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


def _from_rank_zero(value: Any) -> Any:
    if _world() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def save_sharded(
    path: str | os.PathLike[str],
    module: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    state: dict[str, Any],
    optimizer_view: OptimizerView = lambda module: contextlib.nullcontext(),
) -> None:
    """Write ``module`` and ``optimizers`` (sharded, each rank its own shards) and this rank's ``state`` to the
    directory ``path`` atomically (see the module docstring). Every rank calls it with its own ``state``."""
    target = Path(path)
    staging = Path(_from_rank_zero(str(target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")))
    payload: dict[str, Any] = {"model": get_model_state_dict(module)}
    if optimizers:
        with optimizer_view(module):
            payload["optim"] = get_optimizer_state_dict(module, list(optimizers))
    dcp.save(payload, checkpoint_id=str(staging))
    plain, sharded_leaves = localize(state)  # DTensors in a rank's state are kept as plain local shards
    extras = {
        **plain,
        LAYOUT_KEY: sharded_leaves,
        "sharded": {"world_size": _world(), "optimizer_groups": [len(o.param_groups) for o in optimizers]},
    }
    _write_durably(extras, staging / "extras" / f"rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        write_manifest(staging, _world())
        _swap_in(staging, target)
    _barrier()


def load_sharded(
    path: str | os.PathLike[str],
    module: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    optimizer_view: OptimizerView = lambda module: contextlib.nullcontext(),
) -> dict[str, Any]:
    """Load a sharded checkpoint into the set-up ``module`` and ``optimizers`` (none: weights only), on every rank;
    return this rank's ``state`` (rank 0's for a rank the checkpoint did not have). Written by another number of
    ranks, its sharded leaves (float32 copies, compensation) are rebuilt whole from every rank's shards, and each
    rank keeps its own shard of them (:func:`~prec.cluster.dtensor.copy_into`)."""
    source = readable(Path(path))
    problem = _verify(source, Path(path)) if _rank() == 0 else None
    problem = _from_rank_zero(problem)
    if problem is not None:
        raise CheckpointError(problem)
    assert source is not None
    payload: dict[str, Any] = {"model": get_model_state_dict(module)}
    if optimizers:
        with optimizer_view(module):
            payload["optim"] = get_optimizer_state_dict(module, list(optimizers))
    reader = SafeReader(source, listed_files(source))
    casts = raise_checkpoint_error(lambda: dtype_changes(reader.read_metadata(), payload), source)
    if casts and _rank() == 0:
        warn(
            f"sharded checkpoint {source.name} holds {len(casts)} tensors in another dtype than this run's; they"
            f" are cast on load: {', '.join(casts[:_LISTED])}{' …' if len(casts) > _LISTED else ''}.",
            PrecWarning,
        )
    raise_checkpoint_error(lambda: dcp.load(payload, storage_reader=reader), source)
    set_model_state_dict(module, payload["model"])
    if optimizers:
        with optimizer_view(module):
            set_optimizer_state_dict(module, list(optimizers), payload["optim"])
    saved_world = read_manifest(source)["world_size"]
    extras = _read_extras(source, _rank() if _rank() < saved_world else 0)
    if saved_world == _world():
        extras.pop(LAYOUT_KEY, None)  # its shards load into the live DTensors (sharded_state.copy_into)
    else:
        extras = with_full_leaves(extras, [_read_extras(source, rank) for rank in range(saved_world)])
    extras.pop("sharded", None)
    return extras


def dtype_changes(metadata: Any, payload: dict[str, Any]) -> list[str]:
    """``"name (saved dtype -> loaded dtype)"`` for each tensor of ``payload`` that ``dcp.load`` would read from a
    tensor saved in another dtype (DCP casts on read, without a word). Keys follow DCP's flattening: nested dict
    keys and list indices joined with dots."""
    saved = {
        key: entry.properties.dtype
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    changes: list[str] = []

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{prefix}.{index}", item)
        elif isinstance(value, torch.Tensor) and prefix in saved and saved[prefix] != value.dtype:
            changes.append(f"{prefix} ({saved[prefix]} -> {value.dtype})")

    visit("", payload)
    return changes


def _read_extras(source: Path, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s own state, unpickled with torch's allow-list (``weights_only=True``)."""
    path = source / "extras" / f"rank{rank}.pt"
    try:
        extras = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a refused or damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"sharded checkpoint {source}: extras/{path.name} is refused: {reason}") from error
    if not isinstance(extras, dict):
        raise CheckpointError(f"sharded checkpoint {source}: extras/{path.name} holds a {type(extras).__name__}.")
    return extras


def export_full_checkpoint(path: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Turn a sharded checkpoint into prec's single-file checkpoint (``state_dict``, ``optimizer_states`` and
    rank 0's state), loadable by ``Trainer(devices=1).fit(..., ckpt_path=destination)``. Runs in one process,
    without a process group; it needs memory for the full model."""
    from prec.checkpoint.io import atomic_save

    source = readable(Path(path))
    problem = _verify(source, Path(path))
    if problem is not None:
        raise CheckpointError(problem)
    assert source is not None
    full = read_whole(source, listed_files(source))
    saved_world = read_manifest(source)["world_size"]
    extras = assemble_full([_read_extras(source, rank) for rank in range(saved_world)])
    layout = extras.pop("sharded")
    checkpoint = {**extras, "state_dict": full["model"]}
    checkpoint["optimizer_states"] = split_optimizer_state(full.get("optim"), layout["optimizer_groups"])
    atomic_save(checkpoint, destination)


def split_optimizer_state(state: dict[str, Any] | None, groups_per_optimizer: list[int]) -> list[dict[str, Any]]:
    """DCP's one name-keyed optimizer state (every optimizer's groups in order) -> one ``optimizer.state_dict()``
    per optimizer, keyed by parameter index as torch numbers them."""
    if state is None:
        return []
    groups = list(state["param_groups"])
    result = []
    for count in groups_per_optimizer:
        own, groups = groups[:count], groups[count:]
        index_of: dict[str, int] = {}
        converted = []
        for group in own:
            ids = []
            for name in group["params"]:
                index_of[name] = len(index_of)
                ids.append(index_of[name])
            converted.append({**group, "params": ids})
        per_param = {index_of[name]: value for name, value in state.get("state", {}).items() if name in index_of}
        result.append({"state": per_param, "param_groups": converted})
    return result


def load_full_into_sharded(
    checkpoint: dict[str, Any] | None,
    module: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    optimizer_view: OptimizerView = lambda module: contextlib.nullcontext(),
) -> None:
    """Load a single-process checkpoint dict (read on rank 0 only; ``None`` elsewhere) into a sharded module and
    its optimizers: rank 0 broadcasts tensor by tensor and each rank keeps its shard."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    if _rank() == 0:
        assert checkpoint is not None
    set_model_state_dict(module, checkpoint["state_dict"] if checkpoint is not None else {}, options=options)
    if not optimizers:
        return
    with optimizer_view(module):
        optimizer_state: dict[str, Any] = {}
        if checkpoint is not None:
            names = {id(parameter): name for name, parameter in module.named_parameters()}
            optimizer_state = name_keyed_optimizer_state(checkpoint.get("optimizer_states", []), optimizers, names)
        set_optimizer_state_dict(module, list(optimizers), optimizer_state, options=options)


def name_keyed_optimizer_state(
    saved: list[dict[str, Any]], optimizers: Sequence[torch.optim.Optimizer], names: dict[int, str]
) -> dict[str, Any]:
    """``optimizer.state_dict()``s (parameter indices) -> DCP's name-keyed form, for the set-up ``optimizers``."""
    if len(saved) != len(optimizers):
        raise CheckpointError(f"the checkpoint holds {len(saved)} optimizer states for {len(optimizers)} optimizers.")
    state: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for optimizer, optimizer_saved in zip(optimizers, saved, strict=True):
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        for group in optimizer_saved["param_groups"]:
            groups.append({**group, "params": [order[index] for index in group["params"]]})
        for index, value in optimizer_saved["state"].items():
            state[order[int(index)]] = value
    return {"state": state, "param_groups": groups}


# -- files ---------------------------------------------------------------------------------------------------
def _verify(source: Path | None, asked: Path) -> str | None:
    """Why the checkpoint at ``source`` cannot be trusted, or ``None``."""
    if source is None:
        return f"no sharded checkpoint at {asked} (a directory with {MANIFEST})."
    return problem_with(source)


def _write_durably(value: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        torch.save(value, file)
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` so that a kill at any moment leaves one complete checkpoint."""
    backup = target.with_name(target.name + BACKUP_SUFFIX)
    if backup.exists() and target.exists():
        shutil.rmtree(backup)  # left by an earlier swap that completed its second rename
    if target.exists():
        os.rename(target, backup)
    os.rename(staging, target)
    _fsync_directory(target.parent)
    shutil.rmtree(backup, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by killed saves
        shutil.rmtree(stale, ignore_errors=True)
