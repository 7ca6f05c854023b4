"""A rank's own state that holds shards: DTensors (bf16-true's float32 copies or Kahan compensation under FSDP2).

A sharded checkpoint keeps each rank's state in ``extras/rank<r>.pt``. A DTensor pickled there would need the
process group to load (and crashes a single process that exports the checkpoint), so :func:`localize` stores
each one as its plain local shard and records where it was and how it was sharded; :func:`assemble_full` puts
the shards of every rank back together for a single-process export, and :func:`copy_into` loads a saved value
(a shard, or a full tensor from a single-process checkpoint) into a live DTensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prec.errors import CheckpointError

__all__ = ["LAYOUT_KEY", "assemble_full", "copy_into", "local_tensor", "localize", "with_full_leaves"]

#: The key of an extras file under which :func:`localize` records the sharded leaves.
LAYOUT_KEY = "sharded_leaves"


def _is_dtensor(value: Any) -> bool:
    return isinstance(value, Tensor) and callable(getattr(value, "to_local", None))


def local_tensor(tensor: Tensor) -> Tensor:
    """The tensor holding this process's values: a DTensor's shard under FSDP2, else the tensor itself."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def localize(state: Any, path: tuple[Any, ...] = ()) -> tuple[Any, list[dict[str, Any]]]:
    """``state`` with every DTensor replaced by its local shard, and one record per replaced leaf: its path,
    global shape and shard dimension (``None`` when replicated)."""
    if _is_dtensor(state):
        placement = state.placements[0] if len(state.placements) == 1 else None
        if placement is None or not (placement.is_shard() or placement.is_replicate()):
            raise CheckpointError(f"cannot save {'/'.join(map(str, path))}: only 1-D meshes are supported.")
        dim = placement.dim if placement.is_shard() else None  # type: ignore[attr-defined]
        record = {"path": list(path), "shape": list(state.shape), "dim": dim}
        return state.to_local().detach().cpu().clone(), [record]
    records: list[dict[str, Any]] = []
    if isinstance(state, dict):
        result = {}
        for key, value in state.items():
            result[key], found = localize(value, (*path, key))
            records += found
        return result, records
    if isinstance(state, (list, tuple)):
        items = []
        for index, value in enumerate(state):
            item, found = localize(value, (*path, index))
            items.append(item)
            records += found
        return type(state)(items), records
    return state, records


def assemble_full(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's state with each sharded leaf rebuilt from every rank's shard (in rank order)."""
    first = per_rank[0]
    records = first.pop(LAYOUT_KEY, [])
    for state in per_rank[1:]:
        state.pop(LAYOUT_KEY, None)
    for record in records:
        shards = [_at(state, record["path"]) for state in per_rank]
        full = shards[0] if record["dim"] is None else torch.cat(shards, dim=record["dim"])
        if list(full.shape) != record["shape"]:
            raise CheckpointError(f"the shards of {'/'.join(map(str, record['path']))} do not add up to its shape.")
        _put(first, record["path"], full)
    return first


def with_full_leaves(own: dict[str, Any], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """``own`` (one rank's state) with each sharded leaf replaced by the whole tensor rebuilt from every rank's
    shard: a resume at another number of ranks, where each rank then takes its own shard of it."""
    records = list(per_rank[0].get(LAYOUT_KEY, []))
    full = assemble_full([dict(state) for state in per_rank])
    own.pop(LAYOUT_KEY, None)
    for record in records:
        _put(own, record["path"], _at(full, record["path"]))
    return own


def copy_into(target: Tensor, value: Tensor) -> None:
    """Copy a saved ``value`` into ``target``. A DTensor target takes a DTensor, this process's shard (a
    checkpoint written by as many processes), or the full tensor (its own shard of it: a single-process file)."""
    if not _is_dtensor(target) or _is_dtensor(value):
        if tuple(value.shape) != tuple(target.shape):  # copy_ would broadcast a smaller tensor silently
            raise CheckpointError(f"a saved tensor of shape {tuple(value.shape)} does not fit {tuple(target.shape)}.")
        target.copy_(value)
        return
    local = target.to_local()
    if tuple(value.shape) == tuple(target.shape) and tuple(local.shape) != tuple(target.shape):
        placement = target.placements[0]
        coordinate = target.device_mesh.get_coordinate()
        if len(target.placements) != 1 or not placement.is_shard() or coordinate is None:
            raise CheckpointError("cannot take a shard of a full tensor for a layout other than a 1-D shard.")
        pieces = torch.chunk(value, target.device_mesh.size(), dim=placement.dim)  # type: ignore[attr-defined]
        value = pieces[coordinate[0]] if coordinate[0] < len(pieces) else value.new_empty(local.shape)
    if tuple(value.shape) != tuple(local.shape):
        raise CheckpointError(
            f"a saved shard of shape {tuple(value.shape)} does not fit this process's shard {tuple(local.shape)}: the"
            " checkpoint was written by another number of processes. Export it to one file with"
            " prec.checkpoint.sharded.export_full_checkpoint and resume from that."
        )
    with torch.no_grad():
        local.copy_(value)


def _at(state: Any, path: list[Any]) -> Any:
    for key in path:
        state = state[key]
    return state


def _put(state: Any, path: list[Any], value: Any) -> None:
    parent = _at(state, path[:-1])
    if isinstance(parent, tuple):
        raise CheckpointError(f"cannot rebuild {'/'.join(map(str, path))} inside a tuple.")
    parent[path[-1]] = value
