"""What the non-finite guard costs per step: prec with ``nonfinite="skip"`` (the default) against ``"off"``.

Tiny MLP (32->64->1, batch 32, SGD) on the CPU, at 32-true and bf16-mixed. Both runs and the raw loop are
interleaved in rounds in one process; a round's sample is the median per-step CPU time (thread time) after
warm-up, and the guard's cost is the median over rounds of (guarded - unguarded) in the same round, as a share
of the unguarded step. Python and C calls per step are counted too (a measure load cannot distort).
Target: the guarded step within 3 % of the unguarded one.

CPU instructions per step (``--instructions``, needs valgrind): each case runs three times under callgrind, which
dumps its counters each time the step clock ticks (the tick calls ``os.getppid``, and callgrind is told
``--dump-before=getppid``), so every dump holds exactly one step; a process's figure is the median over its steps
after warm-up, and the case's figure the median of its three processes (the memory layout a process gets moves
its count by a few thousand). Instrumentation starts at the first tick (``callgrind_control -i on``): importing
torch under full instrumentation would take many minutes. An instruction count does not depend on the machine's
load. Cases: the raw loop, the raw loop around the frameworks' own module (``raw-module``), prec with the guard
off and on, and a loop of your own through the Precision API (``own-loop``, from ``step_calls.py``).

    python benchmarks/guard_cost.py [--rounds 20] [--instructions]

Results: ``results/guard_cost.json`` and ``results/guard_cost.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import StepClock, machine, make_batches, quiet_frameworks, table, write_results
from _runners import RUNNERS
from step_calls import CASE_RUNNERS, count

SIZES = (32, 64, 1)
RUNS = ("raw", "prec", "prec-unguarded")
PRECISIONS = ("32-true", "bf16-mixed")
STEPS, WARMUP = 100, 20


INSTRUCTION_CASES = ("raw", "raw-module", "prec-unguarded", "prec", "own-loop")
INSTRUCTION_PRECISIONS = ("32-true",)  # a run under callgrind takes minutes: the guard's cost is the same
INSTRUCTION_STEPS = 60


class _MarkingClock:
    """Calls ``os.getppid`` at every tick: callgrind dumps its counters there (``--dump-before=getppid``). The
    first tick switches callgrind's instrumentation on."""

    def __init__(self) -> None:
        self.started = False

    def tick(self) -> None:
        if not self.started:
            self.started = True
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
        os.getppid()


def _instruction_child(case: str, precision: str) -> None:
    quiet_frameworks()
    torch.set_num_threads(1)
    run, log = CASE_RUNNERS[case]
    run(precision, SIZES, make_batches(SIZES, 32, INSTRUCTION_STEPS), _MarkingClock(), log)  # type: ignore[arg-type]


def instructions_per_step(case: str, precision: str, processes: int = 3) -> float:
    """CPU instructions of one training step of ``case`` (callgrind's ``Ir``, user space): the median over
    ``processes`` runs of each run's median step. A step's count is steady within a process (a spread of about
    0.5 %), but the memory layout a process gets moves it by a few thousand between processes."""
    runs = [_instructions_one_process(case, precision) for _ in range(processes)]
    figure = statistics.median(runs)
    print(f"{precision} {case}: {figure:,.0f} instructions per step ({runs})", file=sys.stderr, flush=True)
    return figure


def _instructions_one_process(case: str, precision: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--dump-before=getppid",
            "--dump-instr=no",
            f"--callgrind-out-file={folder}/cg.out",
            sys.executable,
            __file__,
            "--child",
            case,
            precision,
        ]
        # One hash seed for every case: string hashing decides dict layouts, and with them a few hundred instructions.
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, capture_output=True, timeout=3600, env=environment)
        dumps = sorted(Path(folder).glob("cg.out.*"), key=lambda path: int(path.name.rsplit(".", 1)[1]))
        totals = [_total(path) for path in dumps]
    # Dump n holds what ran between tick n and tick n + 1 (one whole step); the first steps warm up.
    return statistics.median(totals[WARMUP // 2 : -1])


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise ValueError(f"{path} has no totals line")


INSTRUCTION_NOTE = """\
`raw-module` is the raw loop around the frameworks' own module: the same `training_step` on a plain `nn.Module`,
no framework. Its difference to `raw` is model code, not framework: calling `training_step`, and `self.net` on an
`nn.Module`, a failed attribute lookup (Python 3.11 builds and discards an AttributeError) and then
`Module.__getattr__`, about 9 k instructions alone, where `raw` keeps `net` in a local. `prec vs raw-module` is
what prec adds to the same step; `prec-unguarded` minus `raw-module` is its loop. The guard's share is torch's
fused check kernel (`_amp_foreach_non_finite_check_and_unscale_`, about 16 k for the four gradients: the op's
argument parsing and dispatch, and one TensorIterator per tensor), reading the four `.grad`s (about 3.5 k) and the
Python around them (about 2.5 k).
"""


def instructions_main() -> None:
    rows, data = [], {}
    for precision in INSTRUCTION_PRECISIONS:
        figures = {case: instructions_per_step(case, precision) for case in INSTRUCTION_CASES}
        data[precision] = figures
        raw = figures["raw"]
        rows.append(
            [precision]
            + [f"{figures[case]:,.0f} ({figures[case] / raw:.3f}x)" for case in INSTRUCTION_CASES]
            + [
                f"{figures['prec'] / figures['raw-module']:.3f}x",
                f"{figures['prec'] - figures['prec-unguarded']:+,.0f}",
            ]
        )
        print(precision, figures, file=sys.stderr, flush=True)
    markdown = (
        f"# CPU instructions per step (callgrind), tiny MLP {SIZES}, batch 32, 1 thread\n\n"
        + table(
            [
                "precision",
                *(f"{case} (vs raw)" for case in INSTRUCTION_CASES),
                "prec vs raw-module",
                "guard (on - off)",
            ],
            rows,
        )
        + "\n\nTarget: prec (guard on) <= 1.03x raw; own-loop <= 1.05x raw.\n\n"
        + INSTRUCTION_NOTE
    )
    path = write_results("guard_cost_instructions", {"machine": machine(), "results": data}, markdown)
    print(markdown)
    print(f"written to {path}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _instruction_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--instructions", action="store_true", help="count CPU instructions per step (valgrind)")
    args = parser.parse_args()
    if args.instructions:
        instructions_main()
        return
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
