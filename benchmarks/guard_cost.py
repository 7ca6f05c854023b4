"""What the non-finite guard costs per step: prec with ``nonfinite="skip"`` (the default) against ``"off"``.

Tiny MLP (32->64->1, batch 32, SGD) on the CPU, at 32-true and bf16-mixed. Both runs and the raw loop are
interleaved in rounds in one process; a round's sample is the median per-step CPU time (thread time) after
warm-up, and the guard's cost is the median over rounds of (guarded - unguarded) in the same round, as a share
of the unguarded step. Python and C calls per step are counted too (a measure load cannot distort).
Target: the guarded step within 3 % of the unguarded one.

    python benchmarks/guard_cost.py [--rounds 20]

Results: ``results/guard_cost.json`` and ``results/guard_cost.md``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import StepClock, machine, make_batches, quiet_frameworks, table, write_results
from _runners import RUNNERS
from step_calls import count

SIZES = (32, 64, 1)
RUNS = ("raw", "prec", "prec-unguarded")
PRECISIONS = ("32-true", "bf16-mixed")
STEPS, WARMUP = 100, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    quiet_frameworks()
    torch.set_num_threads(1)
    batches = make_batches(SIZES, 32, STEPS + WARMUP)
    cases = [(precision, run) for precision in PRECISIONS for run in RUNS]
    samples: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
        shift = round_index % len(cases)
        for precision, run in cases[shift:] + cases[:shift]:
            clock = StepClock()
            gc.collect()
            RUNNERS[run][0](precision, SIZES, batches, clock, False)
            if round_index:
                samples[(precision, run)].append(statistics.median(clock.step_us(WARMUP, cpu=True)))
        print(f"round {round_index}/{args.rounds}", file=sys.stderr, flush=True)
    rows, data = [], {}
    for precision in PRECISIONS:
        guarded, unguarded = samples[(precision, "prec")], samples[(precision, "prec-unguarded")]
        diffs = [g - u for g, u in zip(guarded, unguarded, strict=True)]
        share = statistics.median(d / u for d, u in zip(diffs, unguarded, strict=True))
        calls = {run: count(run, precision, 40)["total"] for run in RUNS}
        data[precision] = {"cpu_us": {run: samples[(precision, run)] for run in RUNS}, "calls": calls}
        rows.append(
            [
                precision,
                f"{statistics.median(samples[(precision, 'raw')]):.1f}",
                f"{statistics.median(unguarded):.1f}",
                f"{statistics.median(guarded):.1f}",
                f"{statistics.median(diffs):+.1f} ({100 * share:+.1f} %)",
                f"{calls['raw']:.0f} / {calls['prec-unguarded']:.0f} / {calls['prec']:.0f}",
            ]
        )
    markdown = (
        f"# Non-finite guard cost, tiny MLP {SIZES}, batch 32, {args.rounds} rounds x {STEPS} steps, 1 thread\n\n"
        + table(
            [
                "precision",
                "raw µs/step (CPU)",
                "prec, guard off",
                "prec, guard on",
                "guard cost (median paired)",
                "calls/step raw / off / on",
            ],
            rows,
        )
        + "\n\nTarget: guard on within 3 % of guard off.\n"
    )
    path = write_results("guard_cost", {"machine": machine(), "rounds": args.rounds, "results": data}, markdown)
    print(markdown)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
