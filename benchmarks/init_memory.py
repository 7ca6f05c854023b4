"""Memory and time to build a 537M-parameter model: ``Trainer.init_module()`` per precision vs plain torch.

    python benchmarks/init_memory.py [--rounds 2] [--layers 8] [--width 8192]

Every case runs in a fresh interpreter (peak memory is per process). After imports and Trainer construction the
child resets its peak resident set (``/proc/self/clear_refs``), builds the model, and reports the peak growth
over its resident set just before the build, and the build's wall time. A second, small build under a
``TorchDispatchMode`` counts the kernels that write initial values (``uniform_``, ``normal_`` …): with
``empty_init=True`` there must be none. Targets: bf16-true growth <= 0.51x the 32-true growth; no initialisation
work with ``empty_init=True``. Linux only. Writes results/init_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

RATIO_TARGET = 0.51
INIT_OPS = ("uniform_", "normal_", "bernoulli_", "random_", "exponential_", "fill_", "zero_", "copy_", "orthogonal")
CASES = {
    "torch: float32": "plain torch, float32",
    "torch: bfloat16 directly": "plain torch, torch.set_default_dtype(torch.bfloat16) while building",
    "torch: float32, then .to(bfloat16)": "plain torch, built in float32 and cast",
    "prec 32-true: init_module()": "with trainer.init_module(): ...",
    "prec bf16-true: init_module()": "with trainer.init_module(): ... (weights born in bfloat16)",
    "prec bf16-true: init_module(empty_init=True)": "no weight initialisation (a checkpoint overwrites it)",
    "prec 32-true: init_module(empty_init=True)": "no weight initialisation, float32",
}


# -- child ---------------------------------------------------------------------------------------------------
def _status_kib(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def _context(case: str) -> tuple[Callable[[], AbstractContextManager[Any]], Callable[[Any], Any]]:
    """The context to build in, and what to do with the model afterwards, for ``case``."""
    import torch

    import prec
    from prec.precision import default_dtype

    if case.startswith("prec"):
        precision = case.split()[1].rstrip(":")
        empty = "empty_init=True" in case
        trainer = prec.Trainer(accelerator="cpu", precision=precision, enable_progress_bar=False)
        return (lambda: trainer.init_module(empty_init=empty)), (lambda model: model)
    if case == "torch: bfloat16 directly":
        return (lambda: default_dtype(torch.bfloat16)), (lambda model: model)
    if case == "torch: float32, then .to(bfloat16)":
        return nullcontext, (lambda model: model.to(torch.bfloat16))
    return nullcontext, (lambda model: model)


def _build(layers: int, width: int) -> Any:
    import torch

    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))


def _count_init_ops(case: str) -> dict[str, int]:
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = {}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = func.__name__.split(".")[0]
            if any(op in name for op in INIT_OPS):
                counts[name] = counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    context, finish = _context(case)
    with context(), Count():
        finish(_build(2, 64))
    return counts


def child(case: str, layers: int, width: int) -> dict[str, Any]:
    import torch

    import prec  # noqa: F401 - imports and registry before the baseline

    context, finish = _context(case)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident set restarts from the current one
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    with context():
        model = finish(_build(layers, width))
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    del model
    torch.set_default_dtype(torch.float32)
    return {
        "case": case,
        "params": params,
        "dtypes": dtypes,
        "seconds": seconds,
        "peak_growth_mib": (peak - before) / 1024,
        "init_ops": _count_init_ops(case),
    }


# -- parent --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.width)))
        return
    names = list(CASES)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            command = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--layers",
                str(args.layers),
                "--width",
                str(args.width),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import machine, table, write_results

    results = []
    for name, samples in runs.items():
        growth = [s["peak_growth_mib"] for s in samples]
        seconds = [s["seconds"] for s in samples]
        results.append(
            {
                "case": name,
                "how": CASES[name],
                "params": samples[0]["params"],
                "dtypes": samples[0]["dtypes"],
                "peak_growth_mib": {"median": statistics.median(growth), "min": min(growth), "max": max(growth)},
                "seconds": {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)},
                "init_ops": samples[0]["init_ops"],
            }
        )
    by_case = {r["case"]: r for r in results}
    fp32 = by_case["prec 32-true: init_module()"]["peak_growth_mib"]["median"]
    bf16 = by_case["prec bf16-true: init_module()"]["peak_growth_mib"]["median"]
    empty = by_case["prec bf16-true: init_module(empty_init=True)"]
    checks = {
        "bf16_true_over_32_true": bf16 / fp32,
        "bf16_true_ratio_met": bf16 / fp32 <= RATIO_TARGET,
        "empty_init_ops": sum(empty["init_ops"].values()),
        "empty_init_no_init_work": not empty["init_ops"],
    }
    data = {"rounds": args.rounds, "layers": args.layers, "width": args.width, "machine": machine()}
    data.update(results=results, checks=checks)
    rows = [
        [
            r["case"],
            f"{r['params'] / 1e6:.1f}M {'/'.join(r['dtypes'])}",
            "{median:.0f} ({min:.0f}–{max:.0f})".format(**r["peak_growth_mib"]),
            f"{r['peak_growth_mib']['median'] / fp32:.3f}",
            f"{r['seconds']['median']:.2f} ({r['seconds']['min']:.2f}–{r['seconds']['max']:.2f})",
            ", ".join(f"{op} x{count}" for op, count in sorted(r["init_ops"].items())) or "none",
        ]
        for r in results
    ]
    header = ["case", "parameters", "peak RSS growth MiB (min–max)", "vs prec 32-true", "build s (min–max)",
              "init kernels (2-layer probe)"]  # fmt: skip
    markdown = "\n".join(
        [
            f"### Building {args.layers} x Linear({args.width}, {args.width}) (fresh process per run)",
            "",
            f"{args.rounds} interleaved rounds; {data['machine'].get('cpu')}, {data['machine']['cpu_count']} cores.",
            "",
            table(header, rows),
            "",
            f"- bf16-true / 32-true growth: {checks['bf16_true_over_32_true']:.3f} (target <= {RATIO_TARGET}:"
            f" {'met' if checks['bf16_true_ratio_met'] else '**missed**'})",
            f"- empty_init=True initialisation kernels: {checks['empty_init_ops']}"
            f" ({'met' if checks['empty_init_no_init_work'] else '**missed**'})",
        ]
    )
    path = write_results("init_memory", data, markdown)
    print(markdown)
    print(f"\nwritten: {path} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
