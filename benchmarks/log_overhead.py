"""Per-step cost of ``self.log`` in a prec Trainer, against the same step without it (and a raw loop).

python benchmarks/log_overhead.py [--steps 2000] [--repeats 7]

Writes benchmarks/results/log_overhead.json. Figures are microseconds of CPU time (``time.process_time``, which
a busy shared machine disturbs less than wall time) per training step on a tiny MLP on the CPU, one thread; the
variants run interleaved and each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import prec

FEATURES, BATCH = 32, 16


def make_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FEATURES, generator=generator)
    y = torch.randn(BATCH, 1, generator=generator)
    return [(x, y)] * steps


def make_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


class Net(prec.TrainingModule):
    def __init__(self, logs: int) -> None:
        super().__init__()
        self.mlp = make_mlp()
        self.logs = logs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.mlp(x), y)
        for _ in range(self.logs):
            self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def raw_loop(batches: list[Any]) -> float:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.process_time()
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.process_time() - start


def trainer_loop(batches: list[Any], logs: int, logger: bool, root: Path) -> float:
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=logger, default_root_dir=root
    )
    start = time.process_time()
    trainer.fit(Net(logs), batches)
    return time.process_time() - start


def log_call_cost(calls: int) -> float:
    """The cost of one ``self.log`` call on its own (a module attached to a Trainer, in a training step)."""
    trainer = prec.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False)
    module = Net(0)
    object.__setattr__(module, "_prec_trainer", trainer)
    value = torch.tensor(1.0)
    start = time.process_time()
    for _ in range(calls):
        module.log("loss", value, prog_bar=True)
    return (time.process_time() - start) / calls


def best_interleaved(variants: dict[str, Any], repeats: int) -> dict[str, float]:
    """Run every variant once per round, ``repeats`` rounds; keep each one's fastest run."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = make_batches(args.steps)
    per_step = 1e6 / args.steps
    with tempfile.TemporaryDirectory() as root:
        raw_loop(batches)  # warm up
        trainer_loop(batches, 1, True, Path(root))
        seconds = best_interleaved(
            {
                "raw_loop_us": lambda: raw_loop(batches),
                "trainer_no_log_us": lambda: trainer_loop(batches, 0, False, Path(root)),
                "trainer_one_log_no_logger_us": lambda: trainer_loop(batches, 1, False, Path(root)),
                "trainer_one_log_csv_logger_us": lambda: trainer_loop(batches, 1, True, Path(root)),
            },
            args.repeats,
        )
        figures = {name: value * per_step for name, value in seconds.items()}
        figures["log_call_us"] = min(log_call_cost(20_000) for _ in range(args.repeats)) * 1e6
    figures["log_step_overhead_us"] = figures["trainer_one_log_csv_logger_us"] - figures["trainer_no_log_us"]
    figures["trainer_overhead_us"] = figures["trainer_no_log_us"] - figures["raw_loop_us"]
    result = {
        "benchmark": "self.log per-step cost, tiny MLP (32-32-1, batch 16), CPU, 1 thread",
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "log_call_us is the cost of one self.log call measured alone; the per-step figures are whole"
        " fits, whose run-to-run spread on a shared machine can exceed the difference between them",
        **{name: round(value, 2) for name, value in figures.items()},
    }
    out = Path(__file__).parent / "results" / "log_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
