"""fp8 vs bf16-mixed vs 32-true on a GPU: steps/s and peak memory on a stack of Linear 4096x4096 layers.

    python plugins/prec-torchao/benchmarks/bench_fp8_gpu.py [--layers 8] [--width 4096] [--batch 8192] [--steps 30]

Each case builds the same model, trains ``--steps`` AdamW steps after ``--warmup`` and reports steps/s and
``torch.cuda.max_memory_allocated``. "prec" cases use ``prec.get_precision`` + the Precision API; "raw" cases do
the same by hand with torchao (``convert_to_float8_training`` + ``torch.autocast``), the reference prec must match.
Every case runs eager and with ``torch.compile`` (torchao's fp8 is only faster than bf16 when compiled: the
amax/scale/cast kernels must fuse). Needs a GPU with compute capability 8.9+.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import prec

CASES = ("prec 32-true", "prec bf16-mixed", "prec fp8-mixed", "prec fp8-bf16-true", "raw bf16 autocast", "raw fp8")


def model(layers: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(width, 16)).cuda()


def setup(case: str, layers: int, width: int) -> tuple[torch.nn.Module, Any, Any, Any]:
    """The model and three callables: input conversion, forward context, backward + step."""
    if case.startswith("prec "):
        precision = prec.get_precision(case.split()[1], "cuda")
        with torch.device("cuda"), precision.module_init_context():
            net = model(layers, width)
        net = precision.convert_module(net)
        return net, precision.convert_input, precision.forward_context, precision
    net = model(layers, width)
    if case == "raw fp8":
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        convert_to_float8_training(
            net,
            config=Float8LinearConfig(),
            module_filter_fn=lambda m, n: m.out_features % 16 == 0 and n != str(2 * layers),
        )
    return net, (lambda x: x), (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None


def bench(case: str, compiled: bool, args: argparse.Namespace) -> dict[str, Any]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    net, convert, context, precision = setup(case, args.layers, args.width)
    if compiled:
        net.compile()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.width, device="cuda")
    y = torch.randint(0, 16, (args.batch,), device="cuda")

    def step() -> None:
        with context():
            out = net(convert(x))
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        if precision is not None:
            precision.backward(loss, net)
            precision.optimizer_step(optimizer)
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"case": case, "compiled": compiled, "steps_per_s": args.steps / seconds}
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="eager only (compiling costs minutes)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "bench_fp8_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        print("skipped: needs a GPU with compute capability 8.9+")
        return
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        for case in CASES:
            row = bench(case, compiled, args)
            rows.append(row)
            print(
                f"{case:<22} {'compiled' if compiled else 'eager':<8} {row['steps_per_s']:8.2f} steps/s"
                f"  peak {row['peak_gib']:6.2f} GiB",
                flush=True,
            )
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **vars(args)}
    meta["output"] = str(meta["output"])
    args.output.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
