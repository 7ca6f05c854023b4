"""bf16-true that keeps its updates, per-module float32, in numbers: retention, final loss, bytes, step time.

Run: ``hatch run python benchmarks/precision_depth.py`` (about a minute on 2 CPU cores; ``--quick`` for a smoke
run). Writes ``results/precision_depth.json`` and ``.md``. Everything goes through the Precision API in a plain
loop, the way a user's own loop would, so the numbers are the precision's and nobody else's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import prec
from prec.precision import NORM_TYPES, MasterWeightsPrecision
from prec.training.summary import summarize

RESULTS = Path(__file__).resolve().parent / "results"
MODES: list[tuple[str, dict[str, Any]]] = [
    ("32-true", {}),
    ("bf16-true", {}),
    ("bf16-true", {"master_weights": "fp32"}),
    ("bf16-true", {"master_weights": "kahan"}),
    ("bf16-true", {"master_weights": "stochastic"}),
    ("16-true", {}),
    ("16-true", {"master_weights": "fp32"}),
]


def label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {key}={value if isinstance(value, str) else 'norms'}" for key, value in options.items())


def effective_weights(precision: prec.Precision, weight: torch.Tensor) -> torch.Tensor:
    """What the weights are worth: the float32 copies, the 16-bit weights plus the compensation, or as stored."""
    if isinstance(precision, MasterWeightsPrecision):
        return precision.effective_weight(weight)
    return weight.float()


def retention(name: str, options: dict[str, Any]) -> dict[str, float]:
    """AdamW, lr 1e-4, 100 steps on weights of 1.0 with unit gradients (65 536 weights)."""
    precision = prec.get_precision(name, "cpu", **options)
    model = precision.convert_module(torch.nn.Linear(256, 256, bias=False))
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    precision.setup_optimizer(optimizer)
    if isinstance(precision, MasterWeightsPrecision):
        precision.sync_from_model()
    for _ in range(100):
        model.weight.grad = torch.ones_like(model.weight)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    return {
        "moved_effective": float((1 - effective_weights(precision, model.weight)).mean()),
        "moved_16bit": float((1 - model.weight.detach().float()).mean()),
    }


class TinyTransformer(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, width)
        layer = torch.nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(x)))).mean(dim=1)


def task(kind: str, width: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "regression":
        x = torch.randn(512, 32, generator=generator)
        y = x @ torch.randn(32, 1, generator=generator) + 0.01 * torch.randn(512, 1, generator=generator)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)), x, y
    x = torch.randn(256, 16, 8, generator=generator)
    y = torch.sin(x.sum(dim=(1, 2), keepdim=True).squeeze(-1) / 4)
    return TinyTransformer(width), x, y


def train(kind: str, name: str, options: dict[str, Any], steps: int, width: int, lr: float) -> dict[str, Any]:
    precision = prec.get_precision(name, "cpu", **options)
    model, x, y = task(kind, width)
    precision.convert_module(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    precision.setup_optimizer(optimizer)
    times, losses = [], []
    diverged_at = None
    for step in range(steps):
        index = torch.arange(step * 32, step * 32 + 32) % len(x)
        start = time.perf_counter()
        with precision.forward_context():
            output = model(precision.convert_input(x[index]))
        loss = torch.nn.functional.mse_loss(precision.convert_output(output), y[index])
        precision.backward(loss, model)
        try:
            precision.optimizer_step(optimizer)
        except prec.NonFiniteError:  # the guard stops a run that no longer trains: that is the result
            diverged_at = step
            break
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    with torch.no_grad(), precision.forward_context():
        final = torch.nn.functional.mse_loss(precision.convert_output(model(precision.convert_input(x))), y).item()
    summary = summarize(model, precision, optimizer)
    return {
        "final_loss": float("nan") if diverged_at is not None else final,
        "diverged_at_step": diverged_at,
        "step_ms": 1000 * statistics.median(times[len(times) // 5 :] or [float("nan")]),
        "bytes": {
            "weights": summary.weight_bytes / summary.parameters,
            "gradients": summary.gradient_bytes / summary.parameters,
            "optimizer_state": (summary.optimizer_state_bytes or 0) / summary.parameters,
            "extras": sum(summary.extras.values()) / summary.parameters,
            "total": summary.bytes_per_parameter(),
        },
    }


def step_times(runs: list[tuple[str, dict[str, Any]]], width: int, rounds: int, steps: int) -> dict[str, float]:
    """Milliseconds per transformer step, best of ``rounds`` interleaved rounds (other work on a shared machine
    slows some rounds; interleaving and the minimum keep that out of the ratios)."""
    setups = []
    for name, options in runs:
        precision = prec.get_precision(name, "cpu", **options)
        model, x, y = task("transformer", width)
        precision.convert_module(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        precision.setup_optimizer(optimizer)
        setups.append((label(name, options), precision, model, optimizer, precision.convert_input(x[:32]), y[:32]))
    best = {key: float("inf") for key, *_ in setups}
    for _ in range(rounds):
        for key, precision, model, optimizer, x, y in setups:
            start = time.perf_counter()
            for _ in range(steps):
                with precision.forward_context():
                    output = model(x)
                loss = torch.nn.functional.mse_loss(precision.convert_output(output), y)
                precision.backward(loss, model)
                precision.optimizer_step(optimizer)
                optimizer.zero_grad(set_to_none=True)
            best[key] = min(best[key], 1000 * (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--times-only", action="store_true", help="re-measure the step times of an existing result")
    args = parser.parse_args()
    warnings.simplefilter("ignore", prec.PerformanceWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps, width = (20, 16) if args.quick else (args.steps, args.width)
    runs = [*MODES, ("bf16-true", {"keep_float32": NORM_TYPES}), ("16-true", {"keep_float32": NORM_TYPES})]
    runs.append(("bf16-true", {"master_weights": "fp32", "keep_float32": NORM_TYPES}))
    if args.times_only:
        result = json.loads((args.out / "precision_depth.json").read_text(encoding="utf-8"))
        runs = [(name, options) for name, options in runs if label(name, options) in result["modes"]]
    else:
        result = {"torch": torch.__version__, "steps": steps, "width": width, "modes": {}}
    reference = retention("32-true", {})["moved_effective"]
    for name, options in [] if args.times_only else runs:
        key = label(name, options)
        entry: dict[str, Any] = {}
        if "keep_float32" not in options:
            moved = retention(name, options)
            entry["retention"] = moved["moved_effective"] / reference
            entry["retention_16bit"] = moved["moved_16bit"] / reference
        entry["regression"] = train("regression", name, options, steps, width, 1e-3)
        entry["transformer"] = train("transformer", name, options, steps, width, 1e-3)
        result["modes"][key] = entry
        print(key, json.dumps(entry))
    rounds, per_round = (2, 2) if args.quick else (12, 5)
    times = step_times(runs, 16 if args.quick else 64, rounds, per_round)
    result["step_time"] = {
        "width": 16 if args.quick else 64,
        "rounds": rounds,
        "steps_per_round": per_round,
        "ms": times,
    }
    for key, entry in result["modes"].items():
        entry["step_time_vs_bf16_true"] = times[key] / times["bf16-true"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_depth.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "precision_depth.md").write_text(render(result), encoding="utf-8")


def render(result: dict[str, Any]) -> str:
    full = result["modes"]["32-true"]
    lines = [
        f"# Precision depth (torch {result['torch']}, CPU, {result['steps']} AdamW steps, width {result['width']})",
        "",
        "Retention: AdamW lr 1e-4, 100 steps on weights of 1.0 with unit gradients, movement as a fraction of"
        " 32-true's (effective weights: float32 copies / weights + compensation; 16-bit: the model's weights).",
        "Final loss: mean squared error on the whole training set after training, relative to 32-true.",
        "Bytes per parameter (transformer, AdamW): weights + gradients + optimizer state + extras.",
        f"Step time: transformer of width {result['step_time']['width']}, best of {result['step_time']['rounds']}"
        " interleaved rounds, relative to plain bf16-true.",
        "",
        "| mode | retention | 16-bit retention | regression loss vs 32-true | transformer loss vs 32-true"
        " | bytes/param (w+g+opt+extra) | step time vs bf16-true |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, entry in result["modes"].items():
        kept = f"{100 * entry['retention']:.1f} %" if "retention" in entry else "-"
        kept16 = f"{100 * entry['retention_16bit']:.1f} %" if "retention_16bit" in entry else "-"
        b = entry["transformer"]["bytes"]
        size = (
            f"{b['total']:.0f} ({b['weights']:.0f}+{b['gradients']:.0f}+{b['optimizer_state']:.0f}+{b['extras']:.0f})"
        )
        losses = [_relative_loss(entry[kind], full[kind]) for kind in ("regression", "transformer")]
        lines.append(
            f"| {key} | {kept} | {kept16} | {losses[0]} | {losses[1]} | {size}"
            f" | {entry['step_time_vs_bf16_true']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _relative_loss(entry: dict[str, Any], full: dict[str, Any]) -> str:
    if entry.get("diverged_at_step") is not None:
        return f"non-finite, stopped at step {entry['diverged_at_step']}"
    return f"{entry['final_loss'] / full['final_loss']:.3f}"


if __name__ == "__main__":
    main()
