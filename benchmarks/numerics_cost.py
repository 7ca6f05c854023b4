"""What seeing the numerics costs: calls per step when the monitor is off or idle, step time at the default
cadence, and ``prec plan`` against the steps it measures.

Method:

* **calls per step** (counted, not timed: a busy machine cannot distort a count): ``sys.setprofile`` counts
  every Python ``call`` and C ``c_call`` event of a whole ``fit`` of the tiny MLP at 32-true, for 20 and for 40
  steps; the difference over 20 is the calls of one step, without set-up. Cases: no callback ("off"), a
  ``NumericsMonitor`` whose cadence never comes ("monitor idle": the steps between two recorded ones), one that
  records every step ("monitor measuring"), and a ``DriftCheck`` whose cadence never comes ("drift idle"). The
  "own" column counts the events in the callback's code (its hooks and the numerics engine they call); the rest
  of an idle step's extra calls is the Trainer calling the hooks the callback overrides.
* **step time** (``--threads`` torch threads, 1 by default: steadier on a shared machine): ``transformer-small``
  of ``prec bench`` (2 layers, 128 wide) at 32-true, ``log_every_n_steps=50``;
  fits with and without the monitor alternate, each of ``--steps`` steps, and the median of the per-run times per
  step is compared (interleaved, so drift of a busy machine hits both alike).
* **prec plan**: :func:`prec.cli.plan.make_model_plan` of a 6-layer transformer (the same model, 6 layers) with
  2 measured steps, against the median time of one float32 training step of that model times those 2 steps.

    python benchmarks/numerics_cost.py [--steps 100] [--repeats 3] [--threads 1] [--calls-only]

Results: ``results/numerics_cost.json`` and ``results/numerics_cost.md`` (``PREC_BENCH_RESULTS`` names another
folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

import prec
from prec.cli.bench_models import transformer_small
from prec.cli.plan import make_model_plan

RESULTS = Path(os.environ.get("PREC_BENCH_RESULTS") or Path(__file__).with_name("results"))
TIME_TARGET = 0.02
PLAN_TARGET = 10.0


def _trainer(steps: int, callbacks: list[Any], **kwargs: Any) -> prec.Trainer:
    return prec.Trainer(
        accelerator="cpu", precision="32-true", max_steps=steps, callbacks=callbacks, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs,
    )  # fmt: skip


def _mlp() -> tuple[prec.TrainingModule, list[Any]]:
    class Tiny(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    return Tiny(), [(torch.randn(32, 32), torch.randn(32, 1)) for _ in range(4)]


#: Calls per step cases: what the Trainer runs besides the model.
CASES: dict[str, Any] = {
    "off": list,
    "monitor idle": lambda: [prec.NumericsMonitor(every_n_steps=10**9)],
    "monitor measuring": lambda: [prec.NumericsMonitor(every_n_steps=1, top=0)],
    "drift idle": lambda: [prec.DriftCheck(every_n_steps=10**9)],
}
#: Where the callbacks' own code lives: events there are "own", the rest is the Trainer and torch.
OWN_CODE = (
    str(Path(prec.__file__).parent / "callbacks" / "numerics.py"),
    str(Path(prec.__file__).parent / "callbacks" / "drift.py"),
    str(Path(prec.__file__).parent / "numerics") + os.sep,
)


def _calls(steps: int, case: str) -> dict[str, int]:
    """Python calls, C calls and the callback's own events (either kind) of a whole ``fit`` of ``steps``."""
    model, batches = _mlp()
    trainer = _trainer(steps, CASES[case]())
    counts = {"python": 0, "c": 0, "own": 0}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            counts["python"] += 1
        elif event == "c_call":
            counts["c"] += 1
        else:
            return
        if frame.f_code.co_filename.startswith(OWN_CODE):
            counts["own"] += 1

    sys.setprofile(profile)
    try:
        trainer.fit(model, batches * (steps // len(batches) + 1))
    finally:
        sys.setprofile(None)
    return counts


def calls_per_step() -> dict[str, dict[str, float]]:
    """Per case: Python, C and total calls of one step, and the callback's own share of them."""
    figures: dict[str, dict[str, float]] = {}
    for case in CASES:
        _calls(4, case)  # warm-up: first-call imports (torch._dynamo with the first optimizer) are not a step's
        short, long = _calls(20, case), _calls(40, case)
        per_step = {kind: (long[kind] - short[kind]) / 20 for kind in short}
        figures[case] = {**per_step, "total": per_step["python"] + per_step["c"]}
    return figures


def _timed_fit(steps: int, monitor: bool) -> float:
    model, batches = transformer_small()
    callbacks = [prec.NumericsMonitor(top=0)] if monitor else []
    trainer = _trainer(steps, callbacks, log_every_n_steps=50)
    started = time.perf_counter()
    trainer.fit(model, batches * (steps // len(batches) + 1))
    return (time.perf_counter() - started) / steps


def step_time(steps: int, repeats: int) -> dict[str, float]:
    _timed_fit(5, False)  # warm-up: imports and first-call costs
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for monitor in (False, True):
            times[monitor].append(_timed_fit(steps, monitor))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {"off_s_per_step": off, "on_s_per_step": on, "overhead": on / off - 1}


def plan_time() -> dict[str, float]:
    width = 128

    def six_layers() -> Any:
        model, batches = transformer_small()
        layer = torch.nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True)
        model.encoder = torch.nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
        return model, batches

    module = types.ModuleType("numerics_cost_models")
    module.six_layers = six_layers  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    model, batches = six_layers()
    optimizer = model.configure_optimizers()
    step_times = []
    for index in range(6):
        started = time.perf_counter()
        model.training_step(batches[index % len(batches)], index).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - started)
    step = statistics.median(step_times[1:])
    _, _, seconds = make_model_plan(f"{module.__name__}:six_layers", "bf16-true", steps=2)
    return {"train_step_s": step, "plan_s": seconds, "ratio_to_2_steps": seconds / (2 * step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--calls-only", action="store_true", help="count calls; skip the step and plan timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    calls = calls_per_step()
    off = calls["off"]["total"]
    extra = {case: figures["total"] - off for case, figures in calls.items() if case != "off"}
    timing = None if args.calls_only else step_time(args.steps, args.repeats)
    planning = None if args.calls_only else plan_time()
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "threads": torch.get_num_threads()},
        "calls_per_step": calls,
        "extra_calls_per_step": extra,
        "step_time": timing,
        "step_time_target": TIME_TARGET,
        "plan": planning,
        "plan_target": PLAN_TARGET,
        "steps": args.steps,
        "threads": args.threads,
        "repeats": args.repeats,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "numerics_cost.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Numerics cost",
        "",
        (__doc__ or "").split("Method:")[1].split("    python")[0].strip(),
        "",
        "| calls per step | Python | C | total | extra vs off | own (callback code) |",
        "|---|---|---|---|---|---|",
    ]
    for case, figures in calls.items():
        added = "-" if case == "off" else f"{extra[case]:+.1f}"
        lines.append(
            f"| {case} | {figures['python']:.1f} | {figures['c']:.1f} | {figures['total']:.1f} | {added}"
            f" | {figures['own']:.1f} |"
        )
    if timing is not None and planning is not None:
        lines += [
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| transformer-small step, off | {1000 * timing['off_s_per_step']:.2f} ms | - |",
            f"| transformer-small step, on (every 50) | {1000 * timing['on_s_per_step']:.2f} ms | - |",
            f"| overhead at the default cadence | {100 * timing['overhead']:+.2f} % | <= {100 * TIME_TARGET:.0f} % |",
            f"| prec plan, 6 layers, 2 steps | {planning['plan_s']:.2f} s | - |",
            f"| ... / (2 x one float32 step) | {planning['ratio_to_2_steps']:.1f}x | <= {PLAN_TARGET:.0f}x |",
        ]
    (RESULTS / "numerics_cost.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
