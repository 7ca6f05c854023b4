"""Cost of the checkpoint checksum: save and load time of a 500 MB checkpoint with and without it.

Writes benchmarks/results/checkpoint_checksum.{json,md}. Run: hatch run python benchmarks/checkpoint_checksum.py
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from prec.checkpoint.digest import ALGORITHMS, payload_digest
from prec.training.checkpointing import atomic_save, read_checkpoint

RESULTS = Path(__file__).parent / "results"
REPEATS = 5


def checkpoint(megabytes: int = 500) -> dict[str, object]:
    """A model-like state: 50 float32 tensors of 10 MB each, and Adam-like optimizer state is left out."""
    per_tensor = megabytes * 1_000_000 // 50 // 4
    generator = torch.Generator().manual_seed(0)
    return {"state_dict": {f"layer{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(50)}}


def timed(action) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    state = checkpoint()
    size = sum(t.numel() * 4 for t in state["state_dict"].values())  # type: ignore[union-attr]
    raw = torch.ones(64 * 1024 * 1024)  # 256 MB for the single-thread hash rates
    import ctypes

    view = memoryview((ctypes.c_char * (raw.numel() * 4)).from_address(raw.data_ptr())).cast("B")
    rates = {
        "sha256": 256 / timed(lambda: hashlib.sha256(view).digest()),
        "blake2b": 256 / timed(lambda: hashlib.blake2b(view).digest()),
        "crc32": 256 / timed(lambda: zlib.crc32(view)),
    }
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "checkpoint_bytes": size,
        "single_thread_MB_per_s": {k: round(v) for k, v in rates.items()},
    }
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as folder:
        for algorithm in ALGORITHMS:
            results[f"digest_only_s_{algorithm}"] = round(timed(lambda a=algorithm: payload_digest(state, a)), 3)
        plain, checked = Path(folder) / "plain.ckpt", Path(folder) / "checked.ckpt"
        samples: dict[str, list[float]] = {
            key: [] for key in ("save_without", "save_with", "load_without", "load_with")
        }
        for _ in range(REPEATS):  # interleaved, so a busy moment of a shared machine hits both sides
            for key, action in (
                ("save_without", lambda: atomic_save(state, plain, checksum=False)),
                ("save_with", lambda: atomic_save(state, checked)),
                ("load_without", lambda: read_checkpoint(plain)),
                ("load_with", lambda: read_checkpoint(checked)),
            ):
                start = time.perf_counter()
                action()
                samples[key].append(time.perf_counter() - start)
        for key, values in samples.items():
            kind, side = key.split("_")
            results[f"{kind}_s_{side}"] = round(statistics.median(values), 3)
    for kind in ("save", "load"):
        results[f"{kind}_overhead"] = round(results[f"{kind}_s_with"] / results[f"{kind}_s_without"] - 1, 3)  # type: ignore[operator]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_checksum.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Checkpoint checksum cost",
        "",
        f"A {size / 1e6:.0f} MB checkpoint (50 float32 tensors), median of {REPEATS}, on {results['machine']},"
        f" Python {results['python']}, torch {results['torch']}. Default algorithm: sha256.",
        "",
        "| | without checksum | with checksum (sha256) | overhead |",
        "|---|---|---|---|",
        f"| save (atomic, fsync) | {results['save_s_without']} s | {results['save_s_with']} s |"
        f" {100 * results['save_overhead']:+.0f} % |",  # type: ignore[operator]
        f"| load (read_checkpoint) | {results['load_s_without']} s | {results['load_s_with']} s |"
        f" {100 * results['load_overhead']:+.0f} % |",  # type: ignore[operator]
        "",
        "Digest alone (threads over tensors): "
        + ", ".join(f"{a} {results[f'digest_only_s_{a}']} s" for a in ALGORITHMS)
        + ". Single-thread rates (MB/s): "
        + ", ".join(f"{k} {v}" for k, v in results["single_thread_MB_per_s"].items())  # type: ignore[union-attr]
        + ".",
        "",
    ]
    (RESULTS / "checkpoint_checksum.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
