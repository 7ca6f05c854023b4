"""Verification hashes each storage as torch.load reads it: the same digest, one pass over the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prec.checkpoint.digest import CHECKSUM_KEY, payload_digest
from prec.checkpoint.io import atomic_save, read_checkpoint
from prec.checkpoint.load_digests import LoadTimeDigests, has_checksum_record
from prec.errors import CheckpointError


def _state() -> dict:
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(64, generator=generator)
    return {
        "state_dict": {
            "weight": torch.randn(8, 8, generator=generator),
            "half": torch.randn(16, generator=generator).to(torch.bfloat16),
            "view": shared[8:24],  # a view into a bigger storage: saved with the whole storage
            "whole": shared,
            "empty": torch.empty(0),
        },
        "epoch": 3,
    }


def test_the_load_time_digests_answer_for_whole_storages_and_give_the_same_digest(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    atomic_save(_state(), path)
    known = LoadTimeDigests()
    loaded = torch.load(path, map_location=known.map_location, weights_only=True)
    record = loaded.pop(CHECKSUM_KEY)
    tensors = loaded["state_dict"]
    assert known(tensors["weight"]) is not None and known(tensors["half"]) is not None
    assert known(tensors["whole"]) is not None
    assert known(tensors["view"]) is None  # part of a storage: hashed on its own, as before
    assert known(tensors["empty"]) is None
    assert payload_digest(loaded, record["algorithm"], known) == payload_digest(loaded, record["algorithm"])
    assert payload_digest(loaded, record["algorithm"], known) == record["digest"]


def test_a_flipped_tensor_bit_is_refused_through_the_load_time_digests(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    state = _state()
    atomic_save(state, path)
    data = bytearray(path.read_bytes())
    start = data.index(state["state_dict"]["weight"].numpy().tobytes()[:32])
    data[start + 5] ^= 0x10
    path.write_bytes(bytes(data))
    assert has_checksum_record(path)
    with pytest.raises(CheckpointError, match="do not match"):
        read_checkpoint(path)


def test_only_a_file_with_a_record_is_hashed_during_its_load(tmp_path: Path) -> None:
    recorded, plain, garbage = tmp_path / "r.ckpt", tmp_path / "p.ckpt", tmp_path / "g.ckpt"
    atomic_save(_state(), recorded)
    torch.save(_state(), plain)
    garbage.write_bytes(b"not a zip at all")
    assert has_checksum_record(recorded)
    assert not has_checksum_record(plain)
    assert not has_checksum_record(garbage)
    assert not has_checksum_record(tmp_path / "missing.ckpt")
    assert read_checkpoint(plain)["epoch"] == 3  # unverified, loaded as before
