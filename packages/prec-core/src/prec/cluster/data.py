"""Give every process its shard of a ``DataLoader`` (a ``DistributedSampler``), and advance its epoch.

The loader is rebuilt with the same arguments and a ``DistributedSampler`` in place of the default sequential or
random sampler. A loader whose sampler already is a ``DistributedSampler`` is kept as the user built it. Every
``iter()`` calls ``sampler.set_epoch`` so a shuffled loader draws a new order each epoch, the same on every rank.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from prec._warnings import warn
from prec.errors import PrecWarning


class EpochLoader:
    """A ``DataLoader`` whose distributed sampler gets ``set_epoch`` before each pass; everything else is
    forwarded to the loader (``len``, ``dataset``, ``batch_size`` …)."""

    def __init__(self, loader: DataLoader[Any], sampler: DistributedSampler[Any], epoch: Callable[[], int]) -> None:
        self.loader = loader
        self.sampler = sampler
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self._epoch())
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def distribute_dataloader(loader: Any, world_size: int, rank: int, epoch: Callable[[], int], *, seed: int = 0) -> Any:
    """``loader`` with a ``DistributedSampler`` for ``rank`` of ``world_size`` (see the module docstring).

    Non-``DataLoader`` iterables and iterable-style datasets are returned unchanged: they cannot be split by
    index, so the user shards them (a warning says so once, since each rank would otherwise see every batch).
    """
    if isinstance(loader, EpochLoader):
        return loader
    if not isinstance(loader, DataLoader):
        warn(
            f"{type(loader).__name__} is not a torch DataLoader, so it cannot be split between the {world_size}"
            " processes: every rank iterates all of it. Pass a DataLoader over a map-style dataset, or shard it"
            " yourself with trainer.global_rank and trainer.world_size.",
            PrecWarning,
        )
        return loader
    if isinstance(loader.dataset, IterableDataset):
        return loader  # documented: an iterable dataset shards itself (torch.utils.data.get_worker_info & rank)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return EpochLoader(loader, sampler, epoch)
    custom_batches = loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler
    if custom_batches or not isinstance(sampler, (SequentialSampler, RandomSampler)):
        warn(
            f"the DataLoader uses its own {'batch sampler' if custom_batches else 'sampler'}"
            f" ({type(loader.batch_sampler if custom_batches else sampler).__name__}); prec leaves it alone, so"
            f" unless it shards by rank every one of the {world_size} processes sees the same data. Use a"
            " torch.utils.data.DistributedSampler (or shard inside your sampler).",
            PrecWarning,
        )
        return loader
    distributed = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
    )
    return EpochLoader(rebuild_dataloader(loader, distributed), distributed, epoch)


def rebuild_dataloader(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """A new DataLoader with ``loader``'s settings and ``sampler``."""
    accepted = set(inspect.signature(DataLoader.__init__).parameters) - {"self", "sampler", "batch_sampler", "shuffle"}
    kwargs = {name: getattr(loader, name) for name in accepted if hasattr(loader, name)}
    kwargs["prefetch_factor"] = loader.prefetch_factor if loader.num_workers > 0 else None
    return DataLoader(**kwargs, sampler=sampler)
