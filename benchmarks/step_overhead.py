"""Per-step time: prec's Trainer against a raw PyTorch loop doing the same work (and Lightning, when installed).

    python benchmarks/step_overhead.py --model tiny          # 32->64->1 MLP: framework overhead per step
    python benchmarks/step_overhead.py --model mid           # 1024->4096->4096->1024: steps/s vs raw
    python benchmarks/step_overhead.py --model mid-reduced   # 256->1024->1024->256, for slow (emulated) bf16

All runners and precisions are interleaved in rounds inside one process (the order rotates every round). A
round's sample is the median per-step time of that run after warm-up; a case's figure is the median of its
rounds, with the min–max over rounds. "Overhead" is the median over rounds of (case − raw) in the same round,
which cancels most of the load other processes put on the machine. Writes results/step_overhead_<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PRECISIONS, StepClock, Summary, has_lightning, machine, make_batches, quiet_frameworks, table
from _harness import write_results as write
from _runners import NEEDS_LIGHTNING, RUNNERS

SHAPES = {
    # name: (sizes, batch size, timed steps, warm-up steps, rounds, runners)
    "tiny": ((32, 64, 1), 32, 100, 20, 40, ("raw", "prec", "prec+log", "lightning", "lightning+log", "fabric")),
    "mid": ((1024, 4096, 4096, 1024), 256, 3, 1, 3, ("raw", "prec", "lightning")),
    "mid-reduced": ((256, 1024, 1024, 256), 64, 6, 1, 5, ("raw", "prec", "lightning")),
}
# Targets from the project's performance requirements: overhead in microseconds, or steps/s ratio to raw.
OVERHEAD_TARGET_US = {("prec", "32-true"): 10.0, ("prec", "bf16-mixed"): 10.0, ("prec+log", "32-true"): 20.0}
OVERHEAD_TARGET_US[("prec+log", "bf16-mixed")] = 20.0
MID_RATIO_TARGET = 0.98


def measure(shape: str, precisions: list[str], runners: list[str], rounds: int, steps: int, warmup: int) -> dict:
    sizes, batch_size = SHAPES[shape][0], SHAPES[shape][1]
    batches = make_batches(sizes, batch_size, warmup + steps)
    cases = [(precision, runner) for precision in precisions for runner in runners]
    samples: dict[str, dict[tuple[str, str], list[float]]] = {kind: {c: [] for c in cases} for kind in ("wall", "cpu")}
    for round_index in range(rounds + 1):  # round 0 warms every code path up and is thrown away
        shift = round_index % len(cases)
        for precision, runner in cases[shift:] + cases[:shift]:
            function, log = RUNNERS[runner]
            clock = StepClock()
            gc.collect()
            function(precision, sizes, batches, clock, log)
            if round_index:
                for kind in ("wall", "cpu"):
                    samples[kind][(precision, runner)].append(statistics.median(clock.step_us(warmup, kind == "cpu")))
        print(f"round {round_index}/{rounds} done", file=sys.stderr, flush=True)
    results = []
    for precision, runner in cases:
        row: dict = {"precision": precision, "runner": runner}
        for kind in ("wall", "cpu"):
            case, raw = samples[kind][(precision, runner)], samples[kind][(precision, "raw")]
            paired = [value - base for value, base in zip(case, raw, strict=True)]
            summary, raw_median = Summary.of(case), statistics.median(raw)
            row[kind] = {
                "us_per_step": summary.as_dict(),
                "steps_per_s": 1e6 / summary.median,
                "ratio_to_raw": summary.median / raw_median,
                "overhead_us": {"median": statistics.median(paired), "min": min(paired), "max": max(paired)},
                "overhead_of_minimums_us": min(case) - min(raw),
                **_target(shape, runner, precision, paired, raw_median, summary.median),
            }
        results.append(row)
    return {"shape": shape, "sizes": sizes, "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "rounds": rounds, "results": results}  # fmt: skip


def _target(shape: str, runner: str, precision: str, paired: list[float], raw: float, case: float) -> dict:
    if shape == "tiny" and (runner, precision) in OVERHEAD_TARGET_US:
        limit = OVERHEAD_TARGET_US[(runner, precision)]
        return {"target": f"overhead <= {limit:g} us", "met": statistics.median(paired) <= limit}
    if shape != "tiny" and runner == "prec":
        return {"target": f"steps/s >= {MID_RATIO_TARGET:.0%} of raw", "met": raw / case >= MID_RATIO_TARGET}
    return {"target": None, "met": None}


def render(data: dict) -> str:
    rows = []
    for r in data["results"]:
        wall, cpu = r["wall"], r["cpu"]
        us, overhead, cpu_overhead = wall["us_per_step"], wall["overhead_us"], cpu["overhead_us"]
        rows.append(
            [
                r["precision"],
                r["runner"],
                _fmt(us["median"]),
                f"{_fmt(us['min'])}–{_fmt(us['max'])}",
                f"{1 / wall['ratio_to_raw']:.3f}",
                f"{overhead['median']:+.1f} ({overhead['min']:+.1f}…{overhead['max']:+.1f})",
                f"{wall['overhead_of_minimums_us']:+.1f}",
                _fmt(cpu["us_per_step"]["median"]),
                f"{cpu_overhead['median']:+.1f} ({cpu_overhead['min']:+.1f}…{cpu_overhead['max']:+.1f})",
                wall["target"] or "",
                _met(wall["met"]) + (f" / {_met(cpu['met'])}" if cpu["met"] is not None else ""),
            ]
        )
    info = data["machine"]
    header = ["precision", "runner", "wall µs/step", "min–max", "steps/s vs raw", "wall overhead µs (min…max)",
              "overhead of minimums µs", "CPU µs/step", "CPU overhead µs (min…max)", "target",
              "met (wall / CPU)"]  # fmt: skip
    return "\n".join(
        [
            f"### Step time, {data['shape']} MLP {'→'.join(map(str, data['sizes']))}, batch {data['batch_size']}",
            "",
            f"{info.get('cpu')} ({', '.join(info.get('flags', []))}), {info['cpu_count']} cores,"
            f" torch {info['torch']} with {info['torch_threads']} thread(s), Lightning {info['lightning'] or '-'};"
            f" {data['steps']} timed steps after {data['warmup']} warm-up, {data['rounds']} interleaved rounds;"
            f" load average (1/5/15 min) at the end {', '.join(f'{x:.1f}' for x in info['load_average'])}.",
            "",
            table(header, rows),
        ]
    )


def _met(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 1e5 else f"{value / 1e6:,.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--runners", nargs="+", choices=sorted(RUNNERS), default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: stable under load; 0: torch's default)"
    )
    parser.add_argument("--out", default=None, help="results name (default step_overhead_<model>)")
    parser.add_argument("--render", metavar="JSON", help="re-render the Markdown of an earlier results file")
    args = parser.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
        write(data["benchmark"], {k: v for k, v in data.items() if k not in ("benchmark", "when")}, render(data))
        return
    _, _, steps, warmup, rounds, runners = SHAPES[args.model]
    runners = list(args.runners or runners)
    if not has_lightning():
        runners = [runner for runner in runners if runner not in NEEDS_LIGHTNING]
        print("Lightning is not installed: measuring raw and prec only", file=sys.stderr)
    if "raw" not in runners:
        runners.insert(0, "raw")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_frameworks()
    data = measure(args.model, args.precisions, runners, args.rounds or rounds, args.steps or steps,
                   args.warmup or warmup)  # fmt: skip
    data["machine"] = machine()
    markdown = render(data)
    path = write(args.out or f"step_overhead_{args.model}", data, markdown)
    print(markdown)
    print(f"\nwritten: {path} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
