"""One measured training run of ``prec bench``: a fresh model trained through :class:`prec.Trainer` at one
precision, with every step's end time stamped and the peak memory growth recorded.

Kept apart from :mod:`prec.cli.bench`, which decides what to run and what to recommend; this module only measures.
Torch is imported inside the functions, so importing this module (to register the command) stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prec.cli.bench_models import build_model

if TYPE_CHECKING:
    import torch

    from prec.accelerator import Accelerator

__all__ = ["Run", "run_once"]


@dataclass
class Run:
    """One training run of one precision: per-step times and losses."""

    step_ns: list[int]
    losses: list[float]
    peak_memory_mib: float | None


def _sync(device: torch.device) -> None:
    import torch

    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "synchronize"):
        module.synchronize()


class _Recorder:
    """Callback that stamps the end of every step and keeps the (detached) losses."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[int] = []
        self.losses: list[Any] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach() if loss is not None else None)
        if self.device.type != "cpu":
            _sync(self.device)  # per-step times on an asynchronous device need a sync; the bench pays it
        self.stamps.append(time.perf_counter_ns())


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Peak memory growth during the body: the device allocator's peak, or on Linux CPUs the process's peak
    resident set (reset through ``/proc/self/clear_refs``) above what it was at the start."""
    import ctypes

    import torch

    result: dict[str, float | None] = {"mib": None}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        result["mib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    start_kib = None
    if device.type == "cpu" and sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next run's growth is its own
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset the peak resident set ("high water mark") to the current one
            start_kib = _status_kib("VmRSS")
    yield result
    if start_kib is not None:
        result["mib"] = max(0.0, (_status_kib("VmHWM") - start_kib) / 1024)


def _status_kib(field_name: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise OSError(f"{field_name} missing from /proc/self/status")


def run_once(
    factory: Callable[[], Any], spec: str, accelerator: Accelerator, precision: str, steps: int, warmup: int, seed: int
) -> Run:
    """Build the model afresh from ``seed`` and train ``warmup + steps`` steps at ``precision``."""
    import tempfile

    from prec.errors import PerformanceWarning
    from prec.model.callback import Callback
    from prec.trainer import Trainer

    device = accelerator.get_device(0)
    with _peak_memory(device) as memory, tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)  # the table shows the speed; no need to warn
        module, batches = build_model(factory, spec, seed)
        batches = [_to_device(batch, device) for batch in batches]
        recorder = _recorder_class(Callback)(device)
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_steps=warmup + steps,
            enable_progress_bar=False,
            callbacks=[recorder],
            default_root_dir=root,
        )
        total = warmup + steps
        trainer.fit(module, [batches[index % len(batches)] for index in range(total)])
    stamps = recorder.stamps[warmup - 1 :]
    step_ns = [later - earlier for earlier, later in zip(stamps[:-1], stamps[1:], strict=False)]
    losses = [float(loss.float()) if loss is not None else math.nan for loss in recorder.losses]
    return Run(step_ns, losses, memory["mib"])


@functools.cache
def _recorder_class(callback_base: type) -> type:
    return type("BenchRecorder", (_Recorder, callback_base), {})


def _to_device(batch: Any, device: torch.device) -> Any:
    from prec.precision.base import apply_to_tensors

    return apply_to_tensors(batch, lambda tensor: tensor.to(device))
