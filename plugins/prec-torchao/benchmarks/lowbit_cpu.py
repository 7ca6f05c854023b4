"""MXFP8 and int8 training against bf16-mixed on the CPU: how far does the loss of the transformer-like benchmark
model end from bf16-mixed's?

    python plugins/prec-torchao/benchmarks/lowbit_cpu.py [--steps 300] [--width 64] [--blocks 4]

The model, data and optimizer are those of ``benchmarks/fp8_cpu.py`` (pre-norm residual MLP blocks, a 48-way
input and output projection, AdamW at 1e-3, batches of 64 drawn from a fixed teacher), for every precision the
same seed. MXFP8 is torchao's emulation (real e4m3 casts with one power-of-two scale per 32 elements, the matmul in
bfloat16 on the dequantised values); int8 is real (``torch._int_mm``). Reports the final loss (mean of the last 20
steps), its relative gap to bf16-mixed, the Linear layers converted and seconds per step (CPU speed says nothing
about a GPU). Writes cpu_results/lowbit_cpu.{json,md} next to this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

PRECISIONS = ("32-true", "bf16-mixed", "fp8-mixed", "mxfp8-mixed", "int8-mixed")
#: Committed, unlike results/ (the GPU check's output, ignored by git).
RESULTS = Path(__file__).parent / "cpu_results"


# The model, data, optimizer and loop are the repository's fp8 benchmark's (benchmarks/fp8_cpu.py): one copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from fp8_cpu import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS / "lowbit_cpu.json")
    args = parser.parse_args()
    rows = [run(name, args.steps, args.width, args.blocks) for name in PRECISIONS]
    reference = next(row["final_loss"] for row in rows if row["precision"] == "bf16-mixed")
    for row in rows:
        row["final_vs_bf16_mixed"] = (row["final_loss"] - reference) / reference
    meta = {"steps": args.steps, "width": args.width, "blocks": args.blocks, "torch": torch.__version__}
    meta |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = [
        f"# MXFP8 and int8 on CPU: {args.blocks} MLP blocks, width {args.width}, {args.steps} AdamW steps",
        "",
        "| precision | first loss | final loss | vs bf16-mixed | Linear converted | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['precision']} | {row['first_loss']:.4f} | {row['final_loss']:.4f} |"
            f" {row['final_vs_bf16_mixed']:+.2%} | {row['converted']} | {row['s_per_step'] * 1000:.1f} ms |"
        )
    kept = {key: why for row in rows for key, why in row["kept"].items() if row["precision"] == "mxfp8-mixed"}
    lines += ["", "mxfp8-mixed kept: " + "; ".join(f"`{k}` ({v})" for k, v in kept.items())]
    lines += ["", f"torch {meta['torch']}, {meta['threads']} threads. Speed on CPU says nothing about a GPU."]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
