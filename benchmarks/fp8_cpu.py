"""fp8 numerics on the CPU: does a small transformer-like MLP train as well under the fp8 names as at 32-true?

    python benchmarks/fp8_cpu.py [--steps 300] [--width 64] [--blocks 4]

torchao emulates the fp8 matmuls on the CPU (the casts to float8_e4m3fn / e5m2 with dynamic scales are real; the
matmul runs in float32 on the dequantised values), so loss curves say how fp8 rounding affects training; the speed
does not say anything about a GPU. Same seed, data and AdamW for every precision. Reports the final loss (mean of
the last 20 steps), its relative difference to 32-true, the fraction of Linear layers converted, and seconds per
step. Writes results/fp8_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import prec

PRECISIONS = ("32-true", "bf16-mixed", "fp8-mixed", "bf16-true", "fp8-bf16-true")
RESULTS = Path(__file__).parent / "results"


class Block(torch.nn.Module):
    """Pre-norm residual MLP block, as in a transformer (attention left out: fp8 converts only Linear layers)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def build(width: int, blocks: int, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(vocab, width),
        *[Block(width) for _ in range(blocks)],
        torch.nn.LayerNorm(width),
        torch.nn.Linear(width, vocab),
    )


def run(name: str, steps: int, width: int, blocks: int, vocab: int = 48, batch: int = 64) -> dict[str, Any]:
    options = {"emulate": True} if name.startswith(("fp8", "mxfp8")) else {}  # emulated on the CPU: said, not warned
    precision = prec.get_precision(name, "cpu", **options)
    with precision.module_init_context():
        model = build(width, blocks, vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PerformanceWarning)
        model = precision.convert_module(model)
    conversion = getattr(precision, "conversion", None)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(vocab, vocab, generator=generator)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        x = torch.randn(batch, vocab, generator=generator)
        y = (x @ teacher).argmax(dim=1)
        with precision.forward_context():
            logits = model(precision.convert_input(x))
        loss = torch.nn.functional.cross_entropy(precision.convert_output(logits), y)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    return {
        "precision": name,
        "first_loss": sum(losses[:20]) / 20,
        "final_loss": sum(losses[-20:]) / 20,
        "curve": [round(value, 5) for value in losses[:: max(1, steps // 30)]],
        "converted_fraction": conversion.fraction if conversion is not None else 0.0,
        "converted": f"{len(conversion.converted)}/{linears}" if conversion is not None else f"0/{linears}",
        "kept": dict(conversion.skipped) if conversion is not None else {},
        "s_per_step": seconds / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS / "fp8_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [run(name, args.steps, args.width, args.blocks) for name in PRECISIONS]
    reference = rows[0]["final_loss"]
    for row in rows:
        row["final_vs_32_true"] = (row["final_loss"] - reference) / reference
    meta = {"steps": args.steps, "width": args.width, "blocks": args.blocks, "torch": torch.__version__}
    meta |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        f"# fp8 on CPU (torchao emulation): {args.blocks} MLP blocks, width {args.width}, {args.steps} AdamW steps",
        "",
        "| precision | first loss | final loss | vs 32-true | Linear converted | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['precision']} | {row['first_loss']:.4f} | {row['final_loss']:.4f} |"
            f" {row['final_vs_32_true']:+.2%} | {row['converted']} ({row['converted_fraction']:.0%}) |"
            f" {row['s_per_step'] * 1000:.1f} ms |"
        )
    lines += ["", f"torch {meta['torch']}, {meta['threads']} threads. Speed on CPU says nothing about a GPU."]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
