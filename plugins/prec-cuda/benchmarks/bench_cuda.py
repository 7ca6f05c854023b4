"""Steps/s and peak memory of 32-true, 16-mixed, bf16-mixed and bf16-true through prec.Trainer and a raw torch loop.

The model is an MLP of ``depth`` square ``width`` layers (defaults: 6 x 4096, about 100M parameters, big enough
for tensor cores), trained with AdamW on one fixed batch so data loading costs nothing. The raw loop is the torch
recipe for the same precision (autocast + GradScaler, or weights in the dtype); the ratio prec/raw is the
Trainer's overhead. Results go to stdout and, as JSON, to ``--output``.

    python plugins/prec-cuda/benchmarks/bench_cuda.py                 # on a GPU
    python plugins/prec-cuda/benchmarks/bench_cuda.py --device cpu --tiny --steps 4 --warmup 1   # smoke test

Without a CUDA device ``--device cuda`` prints "no CUDA device: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import prec
from prec.precision import MixedPrecision
from prec.precision.base import default_dtype

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")
MIXED = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
TRUE = {"32-true": torch.float32, "bf16-true": torch.bfloat16}
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "bench_cuda.json"


def make_mlp(width: int, depth: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers[:-1])


def make_optimizer(params: Any, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device) -> Iterator[dict[str, Any]]:
    """Free what the previous run left, then report the peak memory allocated inside the block."""
    gc.collect()
    result: dict[str, Any] = {"peak_mib": None}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    yield result
    if device.type == "cuda":
        synchronize(device)
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    gc.collect()


class MLPModule(prec.TrainingModule):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.width, self.depth = width, depth
        self.net: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:  # built under Trainer.init_module: on the device, in the precision's dtype
            self.net = make_mlp(self.width, self.depth)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y.float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.parameters(), self.trainer.strategy.root_device)


class StepTimer(prec.Callback):
    """Starts the clock after ``warmup`` steps and stops it when training ends (device synchronised both times)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: Any, module: Any) -> None:
        synchronize(self.device)
        self.end = time.perf_counter()


def run_prec(name: str, args: argparse.Namespace, device: torch.device, batch: tuple[torch.Tensor, ...]) -> dict:
    with measured(device) as result:
        timer = StepTimer(args.warmup, device)
        if device.type == "cpu" and name == "16-mixed":  # 16-mixed is GPU-only by name; same class on CPU
            selection: dict[str, Any] = {"plugins": [MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True)]}
        else:
            selection = {"precision": name}
        trainer = prec.Trainer(
            accelerator=device.type, devices=1, max_steps=args.steps, callbacks=[timer], enable_progress_bar=False,
            logger=False, **selection,
        )  # fmt: skip
        model = MLPModule(args.width, args.depth)
        trainer.fit(model, [batch] * args.steps)
        result["steps_per_s"] = (args.steps - args.warmup) / (timer.end - timer.start)
        result["skipped_steps"] = trainer.precision_plugin.skipped_steps
        del trainer, model
    return result


def run_raw(name: str, args: argparse.Namespace, device: torch.device, batch: tuple[torch.Tensor, ...]) -> dict:
    with measured(device) as result:
        weight_dtype = TRUE.get(name, torch.float32)
        with device, default_dtype(weight_dtype):
            model = make_mlp(args.width, args.depth)
        optimizer = make_optimizer(model.parameters(), device)
        autocast_dtype = MIXED.get(name)
        scaler = torch.amp.GradScaler(device.type) if name == "16-mixed" else None
        x, y = batch
        start = 0.0
        for step in range(args.steps):
            if step == args.warmup:
                synchronize(device)
                start = time.perf_counter()
            inputs = x.to(weight_dtype)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model(inputs)
            loss = torch.nn.functional.mse_loss(out.float(), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        result["steps_per_s"] = (args.steps - args.warmup) / (time.perf_counter() - start)
        del model, optimizer, scaler
    return result


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return "cpu"


def render(rows: list[dict[str, Any]]) -> str:
    base = next((row["prec"]["steps_per_s"] for row in rows if row["precision"] == "32-true"), None)

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    header = ["precision", "prec steps/s", "raw steps/s", "prec/raw", "vs 32-true", "prec peak MiB", "raw peak MiB"]
    lines = [header]
    for row in rows:
        ours, raw = row["prec"], row["raw"]
        lines.append(
            [
                row["precision"],
                f"{ours['steps_per_s']:.2f}",
                f"{raw['steps_per_s']:.2f}",
                f"{ours['steps_per_s'] / raw['steps_per_s']:.3f}",
                f"{ours['steps_per_s'] / base:.2f}x" if base else "-",
                mib(ours["peak_mib"]),
                mib(raw["peak_mib"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--tiny", action="store_true", help="width 64, depth 2, batch 16: a smoke test of the code")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.tiny:
        args.width, args.depth, args.batch = 64, 2, 16
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    if args.device == "cuda":
        from prec_cuda import cuda_probe

        count, reason = cuda_probe()
        if count == 0:
            print(f"no CUDA device: skipped ({reason})")
            return 0
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    warnings.simplefilter("ignore", prec.PerformanceWarning)  # bf16 on a CPU without native bf16: known slow

    torch.manual_seed(0)
    batch = (torch.randn(args.batch, args.width, device=device), torch.randn(args.batch, args.width, device=device))
    params = args.depth * (args.width**2 + args.width)
    print(
        f"{describe(device)}: MLP {args.depth} x {args.width} ({params / 1e6:.1f}M parameters), batch {args.batch},"
        f" {args.steps} steps ({args.warmup} warm-up), AdamW, torch {torch.__version__},"
        f" float32 matmul precision {torch.get_float32_matmul_precision()!r}"
    )
    rows = []
    for name in args.precisions:
        rows.append(
            {"precision": name, "prec": run_prec(name, args, device, batch), "raw": run_raw(name, args, device, batch)}
        )
        print(f"  {name}: done", flush=True)
    table = render(rows)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": describe(device), "parameters": params, "config": {**vars(args), "output": str(args.output)}}
    args.output.write_text(json.dumps({**record, "results": rows}, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
