"""Run every benchmark one after the other, then collect their Markdown tables into results/summary.md.

    python benchmarks/run_all.py            # full runs (tens of minutes on a small CPU machine)
    python benchmarks/run_all.py --quick    # few rounds: a smoke test of the scripts, not a measurement

Mid-size bf16 runs use the reduced MLP when this CPU has no native bfloat16 (emulated bf16 matrix multiplies
take minutes per step at full size there); the full-size MLP then runs at 32-true only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import RESULTS  # noqa: E402

ORDER = (
    "step_overhead_tiny",
    "step_overhead_tiny_prec_only",
    "step_overhead_mid",
    "step_overhead_mid-reduced",
    "import_time",
    "init_memory",
)


def _native_bf16() -> bool:
    try:
        from prec_cpu import native_bf16
    except ImportError:
        return False
    return native_bf16()


def plan(quick: bool) -> list[list[str]]:
    python = sys.executable
    few = (lambda *args: list(args)) if quick else (lambda *args: [])
    mid_precisions = [] if _native_bf16() else ["--precisions", "32-true"]
    return [
        [python, str(HERE / "step_overhead.py"), "--model", "tiny", *few("--rounds", "2", "--steps", "50")],
        [python, str(HERE / "step_overhead.py"), "--model", "mid", *mid_precisions, *few("--rounds", "1")],
        [python, str(HERE / "step_overhead.py"), "--model", "mid-reduced", *few("--rounds", "1", "--steps", "2")],
        [python, str(HERE / "import_time.py"), *few("--rounds", "2")],
        [python, str(HERE / "init_memory.py"), *few("--rounds", "1", "--layers", "2", "--width", "1024")],
    ]


def collect() -> Path:
    parts = ["# Benchmark results", ""]
    for name in ORDER:
        path = RESULTS / f"{name}.md"
        if path.exists():
            parts += [path.read_text().strip(), ""]
    summary = RESULTS / "summary.md"
    summary.write_text("\n".join(parts))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for command in plan(args.quick):
        print("$", " ".join(Path(part).name if index < 2 else part for index, part in enumerate(command)), flush=True)
        subprocess.run(command, check=True)
    print(f"summary: {collect()}")


if __name__ == "__main__":
    main()
