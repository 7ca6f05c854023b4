"""Python and C calls per training step: prec's Trainer against the raw loop, counted, not timed.

A busy machine cannot distort a call count. The same runners as ``step_overhead.py`` train the tiny MLP; a
``sys.setprofile`` hook counts every ``call`` (Python function) and ``c_call`` (builtin or C function) event
between the first and the last tick of the step clock, and the count is divided by the steps in between. The
target: prec within 1.05x the raw loop's calls per step at 32-true and bf16-mixed. ``own-loop`` is a loop of
your own through the Precision API, as docs/index.md shows it (``precision.optimizer_step(optimizer)``, the
non-finite guard on): it takes the Trainer's bound fast path without asking for it.

    python benchmarks/step_calls.py [--steps 60]

Results: ``results/step_calls.json`` and ``results/step_calls.md``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from _harness import build_net, machine, make_batches, quiet_frameworks, table, write_results
from _runners import LR, RUNNERS

SIZES = (32, 64, 1)
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
TARGET = 1.05
CASES = ("raw", "prec", "prec+log", "own-loop")


def run_own_loop(precision: str, sizes: Any, batches: list[Any], clock: Any, log: bool) -> None:
    """A loop of your own through the Precision API (docs/index.md), with ``zero_grad`` as the raw loop has."""
    import prec

    plugin = prec.get_precision(precision, accelerator="cpu")
    net = plugin.convert_module(build_net(sizes))
    plugin.setup_module(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    tick = clock.tick
    for x, y in batches:
        tick()
        x = plugin.convert_input(x)
        with plugin.forward_context():
            loss = torch.nn.functional.mse_loss(net(x).float(), y.float())
        plugin.backward(loss, net)
        plugin.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)


CASE_RUNNERS = {**RUNNERS, "own-loop": (run_own_loop, False)}


class CallCounter:
    """Counts profile events between the first and the last ``tick`` (the tops of the first and last step)."""

    def __init__(self) -> None:
        self.calls = 0
        self.c_calls = 0
        self.ticks = 0
        self.counting = False

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            self.calls = self.c_calls = 0
            self.counting = True
            sys.setprofile(self._profile)

    def stop(self) -> None:
        sys.setprofile(None)
        self.counting = False

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1


def count(case: str, precision: str, steps: int) -> dict[str, float]:
    """Calls per step of one runner: the profile runs from the first step's tick to the end of the run, and the
    last step's tick marks the end of the counted window, so the window holds ``steps - 1`` whole steps."""
    run, log = CASE_RUNNERS[case]
    counter = CallCounter()
    marks: list[tuple[int, int]] = []

    class Clock:
        def tick(self) -> None:
            counter.tick()
            marks.append((counter.calls, counter.c_calls))

    batches = make_batches(SIZES, 32, steps)
    try:
        run(precision, SIZES, batches, Clock(), log)  # type: ignore[arg-type]
    finally:
        counter.stop()
    (first_calls, first_c), (last_calls, last_c) = marks[1], marks[-1]
    window = len(marks) - 2
    python = (last_calls - first_calls) / window
    native = (last_c - first_c) / window
    return {"python": python, "c": native, "total": python + native}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    quiet_frameworks()
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for precision in PRECISIONS:
        results[precision] = {case: count(case, precision, args.steps) for case in CASES}
    rows = []
    for precision, cases in results.items():
        raw = cases["raw"]["total"]
        for case in CASES:
            figures = cases[case]
            rows.append(
                [
                    precision,
                    case,
                    f"{figures['python']:.1f}",
                    f"{figures['c']:.1f}",
                    f"{figures['total']:.1f}",
                    f"{figures['total'] / raw:.3f}x",
                ]
            )
    markdown = (
        f"# Calls per training step, tiny MLP {SIZES} (batch 32, SGD), {args.steps} steps\n\n"
        + table(["precision", "runner", "Python calls", "C calls", "total", "vs raw"], rows)
        + f"\n\nTarget: prec and own-loop <= {TARGET}x raw at 32-true and bf16-mixed (bf16-true sets the default"
        " dtype around each step by design).\n"
    )
    path = write_results("step_calls", {"machine": machine(), "steps": args.steps, "results": results}, markdown)
    print(markdown)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
