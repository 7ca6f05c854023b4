"""Inference weights in a safetensors file: what ``prec export`` writes and how to read it back.

safetensors holds plain tensors only, so a quantized weight is stored as its components, named by what they are::

    {name}.int8_values          int8  [out, in]              int8 weight-only: the quantized values
    {name}.int4_values_packed   uint8 [out, ceil(in / 2)]    int4 weight-only: two values a byte along the last
                                                             dimension, the even column in the low nibble, each
                                                             a two's complement 4-bit number (-8 .. 7)
    {name}.scale                float32 [out, in / block]    one scale per block of ``block`` input columns
    {name}.zero_point           int8  [out, in / block]      subtracted before scaling (0 for symmetric schemes)

and ``weight = (values - zero_point) * scale``, each scale and zero point repeated over its block of columns
(torchao's ``dequantize()`` gives the same float32 values). Every other tensor is stored as a plain tensor in its
export dtype. The file's metadata (strings, as safetensors requires) says how to read it: ``format``
(:data:`EXPORT_FORMAT`), ``precision``, ``dtypes`` (JSON: stored tensor name -> dtype) and ``quantized`` (JSON:
weight name -> ``{"scheme", "shape", "block_size"}``). :func:`read_export` returns the weights as a plain
``state_dict`` that any ``nn.Module`` of the architecture loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prec.checkpoint.io import make_temporary
from prec.errors import CheckpointError

__all__ = [
    "EXPORT_FORMAT",
    "export_metadata",
    "QUANTIZED_SCHEMES",
    "QuantizedWeight",
    "file_sha256",
    "pack_int4",
    "read_export",
    "unpack_int4",
    "write_export",
]

#: The ``format`` metadata of a file :func:`write_export` wrote; raised when the layout changes meaning.
EXPORT_FORMAT = "prec-export/1"
#: Quantized schemes and the name suffix of their values tensor.
QUANTIZED_SCHEMES = {"int8_weight_only": "int8_values", "int4_weight_only": "int4_values_packed"}


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight-only quantized tensor's plain components (``values`` unpacked int8, even for int4)."""

    scheme: str
    values: Tensor
    scale: Tensor
    zero_point: Tensor
    block_size: tuple[int, ...]

    def dequantize(self) -> Tensor:
        """``(values - zero_point) * scale`` in float32, each scale repeated over its block of columns."""
        block = self.block_size[-1]
        zero = self.zero_point.float().repeat_interleave(block, dim=-1)[..., : self.values.shape[-1]]
        scale = self.scale.float().repeat_interleave(block, dim=-1)[..., : self.values.shape[-1]]
        return (self.values.float() - zero) * scale


def pack_int4(values: Tensor) -> Tensor:
    """Two 4-bit values (int8 in -8..7) a byte along the last dimension, the even column in the low nibble."""
    if values.dtype != torch.int8 or bool(((values < -8) | (values > 7)).any()):
        raise CheckpointError("pack_int4() takes int8 values in -8..7.")
    if values.shape[-1] % 2:
        values = torch.nn.functional.pad(values, (0, 1))
    nibbles = (values.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: Tensor, columns: int) -> Tensor:
    """The inverse of :func:`pack_int4`: int8 values, ``columns`` of them along the last dimension."""
    low, high = (packed & 0xF).to(torch.int8), (packed >> 4).to(torch.int8)
    values = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)[..., :columns]
    return torch.where(values > 7, values - 16, values)


def write_export(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    quantized: Mapping[str, QuantizedWeight],
    precision: str,
) -> str:
    """Write ``tensors`` and the components of ``quantized`` atomically (temporary file, fsync, rename); returns
    the file's sha256 (hex)."""
    from safetensors.torch import save_file

    path = Path(path)
    stored: dict[str, Tensor] = {name: _plain(value) for name, value in tensors.items()}
    layout: dict[str, dict[str, Any]] = {}
    for name, weight in quantized.items():
        if weight.scheme not in QUANTIZED_SCHEMES:
            raise CheckpointError(f"unknown quantized scheme {weight.scheme!r}; known: {sorted(QUANTIZED_SCHEMES)}.")
        values = pack_int4(weight.values) if weight.scheme == "int4_weight_only" else weight.values
        stored[f"{name}.{QUANTIZED_SCHEMES[weight.scheme]}"] = _plain(values)
        stored[f"{name}.scale"] = _plain(weight.scale)
        stored[f"{name}.zero_point"] = _plain(weight.zero_point)
        layout[name] = {
            "scheme": weight.scheme,
            "shape": list(weight.values.shape),
            "block_size": list(weight.block_size),
        }
    clashes = sorted(set(tensors) & {name for name in stored if name not in tensors})
    if clashes:
        raise CheckpointError(f"tensor names {clashes} clash with the names of quantized components.")
    metadata = {
        "format": EXPORT_FORMAT,
        "precision": precision,
        "dtypes": json.dumps({name: str(value.dtype).removeprefix("torch.") for name, value in stored.items()}),
        "quantized": json.dumps(layout),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = make_temporary(path)
    os.close(descriptor)
    try:
        save_file(stored, temporary, metadata=metadata)
        os.chmod(temporary, 0o666 & ~_umask())  # a file to share, not the private mode of a temporary file
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return file_sha256(path)


def export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an export (its header only), ``dtypes`` and ``quantized`` decoded from JSON."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata: dict[str, Any] = dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise CheckpointError(f"cannot read exported weights {path}: {type(error).__name__}: {error}") from error
    for key in ("dtypes", "quantized"):
        metadata[key] = json.loads(metadata.get(key) or "{}")
    return metadata


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A file :func:`write_export` wrote, as ``(state_dict, metadata)``: quantized weights dequantized to float32,
    every other tensor as stored. A file of another format is a :class:`CheckpointError`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise CheckpointError(f"cannot read exported weights {path}: {type(error).__name__}: {error}") from error
    if metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a prec export ({EXPORT_FORMAT}); its metadata: {sorted(metadata)}.")
    layout: dict[str, dict[str, Any]] = json.loads(metadata.get("quantized") or "{}")
    state: dict[str, Tensor] = {}
    components: set[str] = set()
    for name, entry in layout.items():
        suffix = QUANTIZED_SCHEMES[entry["scheme"]]
        values = stored[f"{name}.{suffix}"]
        if entry["scheme"] == "int4_weight_only":
            values = unpack_int4(values, entry["shape"][-1])
        weight = QuantizedWeight(
            entry["scheme"], values, stored[f"{name}.scale"], stored[f"{name}.zero_point"], tuple(entry["block_size"])
        )
        state[name] = weight.dequantize()
        components |= {f"{name}.{suffix}", f"{name}.scale", f"{name}.zero_point"}
    state.update({name: value for name, value in stored.items() if name not in components})
    return state, metadata


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _plain(value: Tensor) -> Tensor:
    """A dense, contiguous CPU tensor owning its storage (safetensors refuses tensors that share one)."""
    value = value.detach().to("cpu").contiguous()
    whole = value.untyped_storage().nbytes() == value.numel() * value.element_size()
    return value if whole and value.storage_offset() == 0 else value.clone()
