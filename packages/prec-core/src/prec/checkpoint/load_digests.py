"""Hashing a checkpoint's tensors as ``torch.load`` reads them, so verifying it passes over the bytes once.

Verification hashes what was loaded (:mod:`prec.checkpoint.digest`). Done after ``torch.load`` returns, that is a
second pass over every tensor, from main memory once the checkpoint outgrows the CPU cache. ``torch.load`` calls
its ``map_location`` with each storage the moment the storage's bytes are read: :class:`LoadTimeDigests`, passed
there, hashes each storage while those bytes are still in the cache, and later answers for every tensor that is
exactly one whole storage (a state dict's tensors are). Other tensors (views into a shared storage) are hashed as
before. The digest is the same either way, so checkpoints verify exactly as they did.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from prec.checkpoint.digest import ALGORITHMS, CHECKSUM_KEY, DEFAULT_ALGORITHM, bytes_digest

__all__ = ["LoadTimeDigests", "has_checksum_record"]


class LoadTimeDigests:
    """A ``map_location`` for ``torch.load`` that keeps the storages on the CPU (as ``map_location="cpu"``) and
    hashes each one as it is read; calling it with a tensor returns that tensor's digest, or ``None``."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM) -> None:
        self.algorithm = algorithm
        self._new = ALGORITHMS[algorithm]
        self._by_address: dict[int, tuple[int, str]] = {}  # storage data pointer -> (bytes, digest)

    def map_location(self, storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        """Hash ``storage`` now, while its bytes are in the cache; keep it where ``torch.load`` read it (the CPU)."""
        size = storage.nbytes()
        if size and storage.device.type == "cpu":
            # A storage freed during the load may hand its address to a later one, which then replaces it here.
            self._by_address[storage.data_ptr()] = (size, bytes_digest(storage.data_ptr(), size, self._new))
        return storage

    def __call__(self, tensor: torch.Tensor) -> str | None:
        """The digest of ``tensor``'s bytes if it is exactly one whole storage hashed during the load."""
        try:
            if (
                tensor.layout != torch.strided
                or tensor.device.type != "cpu"
                or tensor.is_conj()
                or tensor.is_neg()
                or tensor.storage_offset() != 0
                or not tensor.is_contiguous()
            ):
                return None
            storage = tensor.untyped_storage()
            recorded = self._by_address.get(storage.data_ptr())
        except (RuntimeError, NotImplementedError):  # a wrapper subclass with no storage of its own
            return None
        size = tensor.numel() * tensor.element_size()
        if recorded is None or recorded[0] != size or storage.nbytes() != size:
            return None
        return recorded[1]


def has_checksum_record(path: Path) -> bool:
    """Whether the torch file at ``path`` holds a checksum record, read from its pickle alone (a few KB, no tensor
    bytes): hashing storages during the load pays only for a checkpoint that will be verified. Anything unreadable
    says ``False``: the load then goes on as before and reports what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((item for item in archive.namelist() if item.rpartition("/")[2] == "data.pkl"), None)
            return name is not None and CHECKSUM_KEY.encode() in archive.read(name)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError):
        return False
