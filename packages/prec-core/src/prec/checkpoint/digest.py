"""The checkpoint checksum: a digest of everything a checkpoint holds, stored in it and verified on load.

``torch.load`` does not check the CRCs of the zip it reads, so a flipped bit in a tensor loads as a silently
different weight. The digest covers the *loaded content* (every key, every scalar, and each tensor's type, dtype,
shape and bytes), not the file's bytes: a flip the loader ignores (a zip header, a CRC field) leaves the weights
unchanged, and any flip that changes what loads changes the digest.

New checkpoints use XXH3-128 (``xxhash``): 10-20 GB/s of CPU time on one core, so hashing the tensors adds
10-30 % to the CPU time of a save and about 15 % to a load at 100 and 500 MB, where SHA-256 added 80-110 %
(``benchmarks/results/checkpoint_checksum.md``). A load hashes each storage as ``torch.load`` reads it
(:mod:`prec.checkpoint.load_digests`). It is a check against accidents (a flipped bit on disk or in
transfer), as SHA-256 was here: the record sits in the file it covers, so whoever can edit the file can re-hash
it. The algorithm is named in the record, so checkpoints written with ``sha256`` (or ``blake2b``/``crc32``) still
verify. Those are hashed on a few threads (``hashlib`` releases the GIL); XXH3 is faster than the thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import xxhash

from prec.errors import CheckpointError

#: The top-level key holding ``{"algorithm": ..., "digest": ...}``.
CHECKSUM_KEY = "prec_checksum"
#: What new checkpoints use: XXH3-128 hashes at memory speed and, at 128 bits, misses a random corruption with
#: probability 2**-128 (a CRC-32 only guarantees short bursts); see the module docstring.
DEFAULT_ALGORITHM = "xxh3_128"
_PARALLEL_BYTES = 32 * 1024 * 1024  # below this, threads cost more than they save
_SERIAL: tuple[Callable[[], Any], ...] = (xxhash.xxh3_128,)  # holds the GIL, and is faster than threads anyway


def _crc32() -> Any:
    class _Crc32:
        def __init__(self) -> None:
            self.value = 0

        def update(self, data: Any) -> None:
            self.value = zlib.crc32(data, self.value)

        def hexdigest(self) -> str:
            return f"{self.value:08x}"

    return _Crc32()


ALGORITHMS: dict[str, Callable[[], Any]] = {
    "xxh3_128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "crc32": _crc32,
}


#: Digests of whole tensors already taken (by :class:`prec.checkpoint.load_digests.LoadTimeDigests`, as
#: ``torch.load`` read them): ``known(tensor)`` is its digest, or ``None`` to hash it here.
Known = Callable[[torch.Tensor], "str | None"]


def payload_digest(payload: Any, algorithm: str = DEFAULT_ALGORITHM, known: Known | None = None) -> str:
    """The hex digest of ``payload`` (a checkpoint dict without its checksum record). ``known`` supplies the
    digests of tensors hashed earlier with the same ``algorithm``; the result is the same either way."""
    new = ALGORITHMS[algorithm]
    tokens: list[str] = []
    tensors: list[torch.Tensor] = []
    _walk(payload, tokens, tensors)
    outer = new()
    outer.update("\x1f".join(tokens).encode("utf-8", "surrogatepass"))
    for digest in _tensor_digests(tensors, new, known):
        outer.update(digest.encode())
    return str(outer.hexdigest())


def with_checksum(checkpoint: dict[str, Any], algorithm: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    """A shallow copy of ``checkpoint`` with its checksum record added last."""
    payload = {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}
    return {**payload, CHECKSUM_KEY: {"algorithm": algorithm, "digest": payload_digest(payload, algorithm)}}


def verify_checksum(path: Path, checkpoint: dict[str, Any], known: Any = None) -> bool:
    """Check and remove the checksum record of a loaded checkpoint, in place; ``False`` when it has none (a
    checkpoint written before checksums existed, or by another program). A mismatch is a CheckpointError.
    ``known``: the load's :class:`~prec.checkpoint.load_digests.LoadTimeDigests`, used when its algorithm is the
    record's."""
    record = checkpoint.pop(CHECKSUM_KEY, None)
    if record is None:
        damaged = [key for key in checkpoint if _one_character_off(key, CHECKSUM_KEY)]
        if damaged:
            raise CheckpointError(f"checkpoint {path} is damaged: its checksum record is stored as {damaged[0]!r}.")
        return False
    if (
        not isinstance(record, dict)
        or record.get("algorithm") not in ALGORITHMS
        or not isinstance(record.get("digest"), str)
    ):
        raise CheckpointError(f"checkpoint {path} is damaged: its checksum record is unreadable ({record!r:.80}).")
    usable = known if known is not None and known.algorithm == record["algorithm"] else None
    actual = payload_digest(checkpoint, record["algorithm"], usable)
    if actual != record["digest"]:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents do not match the {record['algorithm']} checksum stored"
            " when it was written (a changed bit on disk or in transfer). Restore it from a copy or use an older"
            " checkpoint."
        )
    return True


def _one_character_off(key: Any, wanted: str) -> bool:
    return (
        isinstance(key, str) and len(key) == len(wanted) and sum(a != b for a, b in zip(key, wanted, strict=True)) == 1
    )


def _walk(value: Any, tokens: list[str], tensors: list[torch.Tensor]) -> None:
    """Flatten ``value`` into type-tagged tokens; tensors are collected and hashed separately."""
    if isinstance(value, torch.Tensor):
        tokens.append(f"T:{type(value).__name__}:{value.dtype}:{tuple(value.shape)}:{value.layout}")
        tensors.append(value)
    elif isinstance(value, dict):
        tokens.append(f"D:{type(value).__name__}:{len(value)}")
        for key, item in value.items():
            _walk(key, tokens, tensors)
            _walk(item, tokens, tensors)
    elif isinstance(value, (list, tuple)):
        tokens.append(f"L:{type(value).__name__}:{len(value)}")
        for item in value:
            _walk(item, tokens, tensors)
    elif isinstance(value, (set, frozenset)):  # iteration order depends on the hash seed
        tokens.append(f"S:{type(value).__name__}:" + ",".join(sorted(repr(item) for item in value)))
    elif isinstance(value, float):
        tokens.append(f"F:{value.hex()}")
    elif value is None or isinstance(value, (bool, int, str, bytes, complex, torch.dtype, torch.device, torch.Size)):
        tokens.append(f"{type(value).__name__}:{value!r}")
    else:
        text = repr(value)
        tokens.append(f"O:{type(value).__qualname__}:{'' if ' at 0x' in text else text}")


def _tensor_digests(tensors: list[torch.Tensor], new: Callable[[], Any], known: Known | None) -> Iterable[str]:
    def digest(tensor: torch.Tensor) -> str:
        earlier = known(tensor) if known is not None else None
        return earlier if earlier is not None else _tensor_digest(tensor, new)

    total = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    workers = min(4, os.cpu_count() or 1)
    if total < _PARALLEL_BYTES or new in _SERIAL or workers == 1 or len(tensors) == 1:
        return [digest(tensor) for tensor in tensors]
    with ThreadPoolExecutor(workers, thread_name_prefix="prec-checksum") as pool:
        return list(pool.map(digest, tensors))


def bytes_digest(pointer: int, size: int, new: Callable[[], Any]) -> str:
    """The hex digest of ``size`` bytes of memory at ``pointer``, hashed in pieces: one call over many GiB would
    hold one buffer for long."""
    hasher = new()
    memory = memoryview((ctypes.c_char * size).from_address(pointer)).cast("B")
    step = 256 * 1024 * 1024
    for start in range(0, size, step):
        hasher.update(memory[start : start + step])
    return str(hasher.hexdigest())


def _tensor_digest(tensor: torch.Tensor, new: Callable[[], Any]) -> str:
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        return "-"  # sparse and meta tensors: their shape and dtype are covered by the tokens only
    data = tensor.detach().resolve_conj().resolve_neg()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.contiguous()
    size = data.numel() * data.element_size()
    if not size:
        return str(new().hexdigest())
    try:
        pointer = data.data_ptr()
    except RuntimeError:  # a wrapper subclass with no storage of its own
        return "-"
    return bytes_digest(pointer, size, new)


def file_digest(path: Path, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The hex digest of a file's bytes, read once in 8 MiB blocks into one reused buffer."""
    hasher = ALGORITHMS[algorithm]()
    buffer = bytearray(8 * 1024 * 1024)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while True:
            count = file.readinto(buffer)
            if not count:
                break
            hasher.update(view[:count])
    return str(hasher.hexdigest())
