"""A process killed (SIGKILL) while it writes a checkpoint over an existing one leaves the old file intact."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from prec.training.checkpointing import atomic_save, read_checkpoint

WRITER = textwrap.dedent(
    """
    import sys, torch
    from prec.training.checkpointing import atomic_save
    big = {"state_dict": {"w": torch.ones(32 * 1024 * 1024)}}  # 128 MiB: the write takes a while
    print("writing", flush=True)
    atomic_save(big, sys.argv[1])
    print("done", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_mid_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    atomic_save({"state_dict": {"w": torch.arange(10.0)}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline and writer.poll() is None:
            partial = [p for p in tmp_path.glob(".model.ckpt.*.tmp") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL, "the writer finished before it could be killed mid-write"
    assert partial, "no partial temporary file was seen"

    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.arange(10.0))
    # The next save over it still works, and replaces it whole.
    atomic_save({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.zeros(3))
