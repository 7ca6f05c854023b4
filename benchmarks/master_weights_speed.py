"""What bf16-true's cheap ``master_weights`` modes cost per step, against plain bf16-true and torchao's
``_AdamW(bf16_stochastic_round=True)``, at the retention and bytes each keeps.

Run: ``hatch run python benchmarks/master_weights_speed.py`` (a few minutes on 2 CPU cores; ``--quick`` for a
smoke run). Writes ``results/master_weights_speed.json`` and ``.md``.

Method: one process, one intra-op thread, CPU time (``time.process_time``) per training step (forward, backward,
optimizer step) and per optimizer step alone. The variants are paired: each round runs one step of every variant
in turn, so load on a shared machine hits them alike, and the median over the rounds is reported. Beside the
times, the aten ops dispatched by one optimizer step are counted (a ``TorchDispatchMode``): a number a busy
machine cannot distort. Retention is ``precision_depth``'s: AdamW lr 1e-4, 100 steps on weights of 1.0 with unit
gradients, movement as a fraction of 32-true's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import prec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_depth import TinyTransformer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LR = 1e-4
_METADATA = {"view", "slice", "detach", "as_strided", "_local_scalar_dense", "alias"}  # touch no element


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _optimizer(kind: str, params: Any) -> torch.optim.Optimizer:
    if kind == "torchao":
        from torchao.optim import _AdamW

        return _AdamW(params, lr=LR, bf16_stochastic_round=True)
    return torch.optim.AdamW(params, lr=LR)


VARIANTS: dict[str, tuple[dict[str, Any], str, float]] = {  # options, optimizer, extra bytes per parameter
    "bf16-true": ({}, "torch", 0),
    "bf16-true master_weights=kahan": ({"master_weights": "kahan"}, "torch", 2),
    "bf16-true master_weights=stochastic": ({"master_weights": "stochastic"}, "torch", 0),
    "bf16-true + torchao _AdamW(bf16_stochastic_round)": ({}, "torchao", 0),
}


def _setup(options: dict[str, Any], optimizer: str, width: int) -> Callable[[bool], float]:
    precision = prec.get_precision("bf16-true", "cpu", **options)
    torch.manual_seed(0)
    model = precision.convert_module(TinyTransformer(width))
    opt = _optimizer(optimizer, model.parameters())
    precision.setup_optimizer(opt)
    generator = torch.Generator().manual_seed(0)
    x = precision.convert_input(torch.randn(32, 16, 8, generator=generator))
    y = torch.randn(32, 1, generator=generator)

    def step(optimizer_only: bool) -> float:
        start = time.process_time()
        with precision.forward_context():
            output = model(x)
        loss = torch.nn.functional.mse_loss(precision.convert_output(output), y)
        precision.backward(loss, model)
        middle = time.process_time()
        precision.optimizer_step(opt)
        opt.zero_grad(set_to_none=True)
        return time.process_time() - (middle if optimizer_only else start)

    return step


def step_times(width: int, rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median CPU milliseconds of a training step and of its optimizer step, the variants paired per round."""
    steps = {key: _setup(options, optimizer, width) for key, (options, optimizer, _) in VARIANTS.items()}
    full: dict[str, list[float]] = {key: [] for key in steps}
    alone: dict[str, list[float]] = {key: [] for key in steps}
    for index in range(warmup + rounds):
        for key, step in steps.items():
            total = step(False)
            optimizer = step(True)
            if index >= warmup:
                full[key].append(total)
                alone[key].append(optimizer)
    return {
        key: {"step_ms": 1000 * statistics.median(full[key]), "optimizer_ms": 1000 * statistics.median(alone[key])}
        for key in steps
    }


def op_counts(width: int) -> dict[str, dict[str, int]]:
    """Aten ops dispatched by one optimizer step (after two warm-up steps), per variant."""
    counts = {}
    for key, (options, optimizer, _) in VARIANTS.items():
        if optimizer == "torchao":
            continue  # compiled: its kernels run below the dispatcher, a count would not compare
        precision = prec.get_precision("bf16-true", "cpu", **options)
        torch.manual_seed(0)
        model = precision.convert_module(TinyTransformer(width))
        opt = _optimizer(optimizer, model.parameters())
        precision.setup_optimizer(opt)
        for index in range(3):
            for p in model.parameters():
                p.grad = torch.full_like(p, 1e-3)
            mode = _CountOps()
            if index == 2:
                with mode:
                    precision.optimizer_step(opt)
                ops = mode.ops
            else:
                precision.optimizer_step(opt)
        compute = sum(n for name, n in ops.items() if name not in _METADATA)
        counts[key] = {"total": sum(ops.values()), "compute": compute, **dict(ops.most_common(6))}
    return counts


def retention(options: dict[str, Any], optimizer: str) -> float:
    """Movement of the effective weights, AdamW lr 1e-4, 100 steps on weights of 1.0 with unit gradients."""
    precision = prec.get_precision("bf16-true" if options is not None else "32-true", "cpu", **(options or {}))
    model = precision.convert_module(torch.nn.Linear(256, 256, bias=False))
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = _optimizer(optimizer, model.parameters())
    precision.setup_optimizer(opt)
    if hasattr(precision, "sync_from_model"):
        precision.sync_from_model()
    for _ in range(100):
        model.weight.grad = torch.ones_like(model.weight)
        precision.optimizer_step(opt)
        opt.zero_grad()
    effective = getattr(precision, "effective_weight", None)
    weight = effective(model.weight) if effective is not None else model.weight.detach().float()
    return float((1 - weight).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rounds, warmup = (4, 2) if args.quick else (40, 5)
    widths = [16] if args.quick else args.widths
    reference = retention(None, "torch")  # type: ignore[arg-type]
    result: dict[str, Any] = {"torch": torch.__version__, "rounds": rounds, "threads": 1, "widths": {}}
    result["retention"] = {key: retention(o, opt) / reference for key, (o, opt, _) in VARIANTS.items()}
    result["bytes_per_parameter"] = {key: 2 + 2 + 4 + extra for key, (_, _, extra) in VARIANTS.items()}
    for width in widths:
        times = step_times(width, rounds, warmup)
        parameters = sum(p.numel() for p in TinyTransformer(width).parameters())
        result["widths"][str(width)] = {"parameters": parameters, "times": times, "ops": op_counts(width)}
        print(width, json.dumps(result["widths"][str(width)]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "master_weights_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "master_weights_speed.md").write_text(render(result), encoding="utf-8")


def render(result: dict[str, Any]) -> str:
    lines = [
        f"# bf16-true master weights: step cost (torch {result['torch']}, CPU, {result['threads']} thread)",
        "",
        "Method: " + (__doc__ or "").split("Method: ", 1)[1].strip().replace("\n", " "),
        "Bytes per parameter: weights + gradients + AdamW state + what the mode keeps beside them.",
        "",
    ]
    for width, entry in result["widths"].items():
        base = entry["times"]["bf16-true"]
        lines += [
            f"## Transformer of width {width} ({entry['parameters']:,} parameters, AdamW lr {LR:g})",
            "",
            "| variant | retention | bytes/param | step (ms) | vs bf16-true | optimizer step (ms)"
            " | aten ops per optimizer step: on elements (all) |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, times in entry["times"].items():
            counted = entry["ops"].get(key)
            ops = f"{counted['compute']} ({counted['total']})" if counted else "compiled"
            lines.append(
                f"| {key} | {100 * result['retention'][key]:.2f} % | {result['bytes_per_parameter'][key]}"
                f" | {times['step_ms']:.2f} | {times['step_ms'] / base['step_ms']:.2f}x | {times['optimizer_ms']:.2f}"
                f" | {ops} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
