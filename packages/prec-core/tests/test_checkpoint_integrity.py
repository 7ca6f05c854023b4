"""Checkpoint files lose nothing: checksums catch flipped bits, killed saves leave no litter, a full disk says so."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from prec.checkpoint.digest import CHECKSUM_KEY, DEFAULT_ALGORITHM, with_checksum
from prec.checkpoint.io import STALE_TEMP_AGE_S, atomic_save, read_checkpoint
from prec.errors import CheckpointError


def small_checkpoint() -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    return {
        "prec_checkpoint_version": 1,
        "state_dict": {"w": torch.randn(64, 32, generator=generator), "b": torch.randn(32, generator=generator)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "loops": {"epoch": 2, "global_step": 17, "batches_seen": 0},
    }


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_every_single_bit_flip_fails_loudly_or_loads_identical_contents(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    original = small_checkpoint()
    atomic_save(original, path)
    assert same(read_checkpoint(path), original)
    data = path.read_bytes()
    rng = random.Random(0)
    flipped = tmp_path / "flipped.ckpt"
    outcomes = {"error": 0, "identical": 0}
    for _ in range(400):
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        damaged = bytearray(data)
        damaged[position] ^= 1 << bit
        flipped.write_bytes(bytes(damaged))
        try:
            loaded = read_checkpoint(flipped)
        except CheckpointError as error:
            assert str(flipped) in str(error)
            outcomes["error"] += 1
            continue
        assert same(loaded, original), f"bit {bit} of byte {position} loaded different contents silently"
        outcomes["identical"] += 1
    assert outcomes["error"] > 200  # most of the file is tensor data, and every flip there is caught


@pytest.mark.parametrize("algorithm", [DEFAULT_ALGORITHM, "sha256", "blake2b", "crc32"])
def test_a_changed_weight_names_the_file(tmp_path: Path, algorithm: str) -> None:
    """New checkpoints use the default digest; ones written with an older algorithm still verify by the one their
    record names."""
    path = tmp_path / "model.ckpt"
    atomic_save(with_checksum(small_checkpoint(), algorithm), path, checksum=False)
    assert torch.load(path, weights_only=True)[CHECKSUM_KEY]["algorithm"] == algorithm
    assert same(read_checkpoint(path), small_checkpoint())
    data = bytearray(path.read_bytes())
    weights = small_checkpoint()["state_dict"]["w"].numpy().tobytes()  # type: ignore[index]
    start = bytes(data).index(weights[:64])
    data[start + 10] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"model\.ckpt is damaged: its contents do not match the {algorithm}"):
        read_checkpoint(path)


def test_new_checkpoints_use_xxh3_128(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    atomic_save(small_checkpoint(), path)
    assert torch.load(path, weights_only=True)[CHECKSUM_KEY]["algorithm"] == DEFAULT_ALGORITHM == "xxh3_128"


def test_an_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({**small_checkpoint(), CHECKSUM_KEY: {"algorithm": "md5", "digest": "00"}}, path)
    with pytest.raises(CheckpointError, match=r"model\.ckpt is damaged: its checksum record is unreadable"):
        read_checkpoint(path)


def test_every_flip_in_tensor_data_is_refused(tmp_path: Path) -> None:
    """200 single-bit flips inside the stored weights: each one loads as different contents, so each is refused."""
    path = tmp_path / "model.ckpt"
    checkpoint = {"state_dict": {"w": torch.randn(4096, generator=torch.Generator().manual_seed(1))}}
    atomic_save(checkpoint, path)
    data = path.read_bytes()
    start = data.index(checkpoint["state_dict"]["w"].numpy().tobytes()[:64])
    rng = random.Random(1)
    flipped = tmp_path / "flipped.ckpt"
    for _ in range(200):
        damaged = bytearray(data)
        damaged[start + rng.randrange(4096 * 4)] ^= 1 << rng.randrange(8)
        flipped.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="is damaged: its contents do not match the xxh3_128"):
            read_checkpoint(flipped)


def test_a_directory_is_not_read_as_one_file(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match=r"plain is a directory, not a checkpoint file"):
        read_checkpoint(tmp_path / "plain")


def test_a_checkpoint_without_checksum_still_loads_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.ckpt"
    torch.save(small_checkpoint(), path)  # as prec wrote them before checksums
    with caplog.at_level(logging.INFO, logger="prec"):
        loaded = read_checkpoint(path)
    assert same(loaded, small_checkpoint())
    assert "has no checksum" in caplog.text


WRITER = textwrap.dedent(
    """
    import sys, torch
    from prec.training.checkpointing import atomic_save
    print("writing", flush=True)
    atomic_save({"state_dict": {"w": torch.ones(16 * 1024 * 1024)}}, sys.argv[1])
    """
)


def kill_mid_write(path: Path) -> int:
    """Start a process saving 64 MiB to ``path`` and SIGKILL it once its temporary file has data."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and writer.poll() is None:
            if any(p.stat().st_size > 0 for p in path.parent.glob(f".{path.name}.*.tmp")):
                break
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    return writer.returncode


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_the_next_save_removes_what_killed_saves_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    atomic_save({"state_dict": {"w": torch.arange(4.0)}}, path)
    killed = [kill_mid_write(path) for _ in range(3)]
    assert -signal.SIGKILL in killed
    left = list(tmp_path.glob(".model.ckpt.*.tmp"))
    assert left, "the killed saves left no temporary file to clean"
    # Files that are not provably abandoned stay: a live process's, another target's, another program's.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        host = left[0].name.split(".")[3]
        live = tmp_path / f".model.ckpt.{host}.{sleeper.pid}.abcdefgh.tmp"
        other_target = tmp_path / f".other.ckpt.{host}.999999999.abcdefgh.tmp"
        foreign = tmp_path / ".model.ckpt.notes.tmp.bak"
        old_style_recent, old_style_stale = tmp_path / ".model.ckpt.k2j4h1x9.tmp", tmp_path / ".model.ckpt.z8y7x6w5.tmp"
        for keep in (live, other_target, foreign, old_style_recent, old_style_stale):
            keep.write_bytes(b"x")
        stale = time.time() - STALE_TEMP_AGE_S - 60
        os.utime(old_style_stale, (stale, stale))
        atomic_save({"state_dict": {"w": torch.zeros(2)}}, path)
        remaining = set(tmp_path.iterdir())
        assert not any(p in remaining for p in left)
        assert old_style_stale not in remaining
        assert {live, other_target, foreign, old_style_recent} <= remaining
        assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.zeros(2))
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> object:
    """A 2 MiB tmpfs: a real file system that runs out of space."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_checkpoint_error_and_keeps_the_previous_file(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "model.ckpt"
    atomic_save({"state_dict": {"w": torch.arange(1000.0)}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match=f"no space left on {tiny_tmpfs}") as caught:
        atomic_save({"state_dict": {"w": torch.ones(1024 * 1024)}}, path)  # 4 MiB on a 2 MiB disk
    assert "the previous checkpoint is intact" in str(caught.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["model.ckpt"]  # no temporary file left
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.arange(1000.0))
