"""Shared pieces of the benchmarks: identical models and data, per-step clocks, statistics, result files.

Every runner (raw loop, prec, Lightning, Fabric) trains the same seeded MLP on the same pre-batched data and
calls :meth:`StepClock.tick` at the top of each step, so per-step times cover exactly the same work: the
framework's code between two ``training_step`` calls plus forward, backward and the optimizer step.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(os.environ.get("PREC_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


# -- identical work ---------------------------------------------------------------------------------------------
def build_net(sizes: Sequence[int], seed: int = 0) -> torch.nn.Sequential:
    """A seeded MLP: every runner starts from the same float32 weights."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def make_batches(sizes: Sequence[int], batch_size: int, count: int, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """``count`` batches on the CPU, built once (the loops only iterate): 4 distinct ones, repeated."""
    generator = torch.Generator().manual_seed(seed)
    distinct = []
    for _ in range(4):
        x = torch.randn(batch_size, sizes[0], generator=generator)
        distinct.append((x, torch.randn(batch_size, sizes[-1], generator=generator)))
    return [distinct[index % 4] for index in range(count)]


class Batches:
    """A plain sized iterable over the batches: Lightning would read a list as a collection of loaders."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loss_of(net: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(net(x).float(), y.float())


class StepClock:
    """Stamps the start of every step with the wall clock and this thread's CPU clock.

    Per-step durations are the differences. Wall time is what users feel; CPU time leaves out the time other
    processes held the core, so on a shared machine it is the steadier measure of the work a framework adds.
    """

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.cpu_stamps: list[int] = []
        wall, cpu, add_wall, add_cpu = (
            time.perf_counter_ns,
            time.thread_time_ns,
            self.stamps.append,
            self.cpu_stamps.append,
        )

        def tick() -> None:
            add_cpu(cpu())
            add_wall(wall())

        self.tick = tick

    def step_us(self, warmup: int, cpu: bool = False) -> list[float]:
        stamps = (self.cpu_stamps if cpu else self.stamps)[warmup:]
        return [(later - earlier) / 1e3 for earlier, later in zip(stamps[:-1], stamps[1:], strict=False)]


# -- statistics and output -----------------------------------------------------------------------------------
@dataclass
class Summary:
    median: float
    low: float
    high: float
    samples: list[float]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        values = list(samples)
        return cls(statistics.median(values), min(values), max(values), values)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "samples": self.samples}


def machine() -> dict[str, Any]:
    from prec.cli.bench import machine_info

    info = machine_info()
    info.update(
        torch=torch.__version__,
        python=platform.python_version(),
        torch_threads=torch.get_num_threads(),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        lightning=_lightning_version(),
    )
    return info


def _lightning_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lightning")
    except Exception:  # noqa: BLE001 - not installed
        return None


def write_results(name: str, data: dict[str, Any], markdown: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; return the Markdown path."""
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(markdown + "\n")
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def quiet_frameworks() -> None:
    """Silence the banners and advice Lightning prints on every Trainer, and prec's emulated-bf16 warning."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*precision=.* on a CPU without native bfloat16.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


def has_lightning() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


Runner = Callable[[str, Sequence[int], list[tuple[torch.Tensor, ...]], StepClock, bool], None]
