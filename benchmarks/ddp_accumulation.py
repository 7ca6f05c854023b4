"""Step time of DDP on gloo with gradient accumulation (4 micro-batches per optimizer step), with and without
``Strategy.no_gradient_sync`` around the first 3 micro-batches.

python benchmarks/ddp_accumulation.py [--steps 40] [--width 1024]

Starts 2 CPU processes itself (RANK/WORLD_SIZE/MASTER_PORT, one thread each), counts all-reduces with a DDP comm
hook, and writes benchmarks/results/ddp_accumulation.json (rank 0's wall time per optimizer step, best of 3 runs
of each variant, interleaved). On a shared 2-core machine the figures are noisy; the all-reduce count is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

MICRO = 4
RESULTS = Path(__file__).parent / "results" / "ddp_accumulation.json"


def worker(steps: int, width: int, out: Path) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    import prec

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, enable_progress_bar=False, logger=False)
    strategy = trainer.strategy
    strategy.setup_environment()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

        def training_step(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).pow(2).mean() / MICRO

    x = torch.randn(8, width)
    results: dict[str, dict[str, float]] = {}
    for _repeat in range(3):
        for variant in ("sync_every_micro_batch", "no_gradient_sync"):
            torch.manual_seed(0)
            wrapped = strategy.setup_module(Net())
            calls = [0]

            def hook(state, bucket, calls=calls):  # type: ignore[no-untyped-def]  # DDP checks real annotations
                calls[0] += 1
                return default_hooks.allreduce_hook(state, bucket)  # type: ignore[arg-type]

            wrapped.register_comm_hook(None, hook)
            optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-3)
            strategy.barrier()
            start = time.perf_counter()
            for _ in range(steps):
                for micro in range(MICRO):
                    quiet = variant == "no_gradient_sync" and micro < MICRO - 1
                    with strategy.no_gradient_sync(wrapped) if quiet else contextlib.nullcontext():
                        wrapped("training_step", x).backward()
                optimizer.step()
                optimizer.zero_grad()
            seconds = (time.perf_counter() - start) / steps
            best = results.get(variant, {}).get("ms_per_step", float("inf"))
            results[variant] = {
                "ms_per_step": min(best, seconds * 1e3),
                "comm_hook_calls_per_step": calls[0] / steps,
            }
    if rank == 0:
        out.write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--worker", type=Path)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.steps, args.width, args.worker)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    scratch = RESULTS.with_suffix(".rank0.tmp")
    processes = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}  # fmt: skip
        command = [sys.executable, __file__, "--steps", str(args.steps), "--width", str(args.width), "--worker"]
        processes.append(subprocess.Popen([*command, str(scratch)], env=env))  # noqa: S603
    for process in processes:
        if process.wait(timeout=1800) != 0:
            raise SystemExit(f"a benchmark rank failed with status {process.returncode}")
    measured = json.loads(scratch.read_text())
    scratch.unlink()
    ratio = measured["no_gradient_sync"]["ms_per_step"] / measured["sync_every_micro_batch"]["ms_per_step"]
    report = {
        "micro_batches_per_step": MICRO,
        "width": args.width,
        "parameters": args.width * args.width + args.width + args.width + 1,
        "steps": args.steps,
        "backend": "gloo, 2 CPU processes, 1 thread each",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        **measured,
        "step_time_ratio": round(ratio, 3),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
