"""``prec bench``: measure every precision this machine offers on one model, then recommend one.

Each precision trains the same model (same seed, same batches) through :class:`prec.Trainer` for a short,
warmed-up run; runs are interleaved over ``--repeats`` rounds so a noisy machine hurts every precision alike.
Reported per precision: steps/s (median and min–max over rounds), peak memory, the final loss and its drift
from 32-true. The recommendation is the fastest precision whose loss stays within ``--tolerance`` of 32-true; a
-true precision other than 32-true (16-bit weights lose small updates) is recommended only when named with
``--precision``. Figures whose rounds spread more than :data:`NOISY_SPREAD` are flagged as noisy, and
``--time-limit`` stops starting new runs once the time is spent.

Torch (and every module only a measurement needs) is imported lazily, so registering this command keeps
``prec list`` fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import click

from prec.cli.bench_measure import Run, run_once
from prec.cli.bench_models import BUILTIN_MODELS, MODEL_DEFAULTS, build_model, resolve_model, select_targets
from prec.cli.bench_report import render
from prec.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

    from prec.accelerator import Accelerator

BASELINE = "32-true"
#: Relative spread of a precision's per-round steps/s ((max - min) / median) above which its figures are noisy.
NOISY_SPREAD = 0.10


# -- summarising ----------------------------------------------------------------------------------------------
@dataclass
class PrecisionResult:
    precision: str
    native: bool | None = None
    steps_per_s: float | None = None
    steps_per_s_min: float | None = None
    steps_per_s_max: float | None = None
    speedup_vs_32_true: float | None = None
    peak_memory_mib: float | None = None
    final_loss: float | None = None
    loss_drift: float | None = None
    error: str | None = None
    rounds: list[float] = field(default_factory=list)


def summarize(precision: str, runs: list[Run], native: bool | None, tail: int = 10) -> PrecisionResult:
    """Median steps/s over rounds (each round: the median step time), memory median, mean of the last losses."""
    import statistics

    per_round = [1e9 / statistics.median(run.step_ns) for run in runs if run.step_ns]
    memories = [run.peak_memory_mib for run in runs if run.peak_memory_mib is not None]
    losses = runs[0].losses[-tail:]
    return PrecisionResult(
        precision=precision,
        native=native,
        steps_per_s=statistics.median(per_round) if per_round else None,
        steps_per_s_min=min(per_round) if per_round else None,
        steps_per_s_max=max(per_round) if per_round else None,
        peak_memory_mib=statistics.median(memories) if memories else None,
        final_loss=sum(losses) / len(losses) if losses else None,
        rounds=per_round,
    )


def recommend(
    results: list[PrecisionResult], tolerance: float, min_speedup: float, allowed_true: Sequence[str] = ()
) -> dict[str, str | None]:
    """The fastest precision within ``tolerance`` loss drift of 32-true that is ``min_speedup`` times as fast as
    32-true in the median and faster in every round; 32-true otherwise (a precision that is not reliably faster
    is not worth its numerical risk). A -true precision other than 32-true is a candidate only when it is in
    ``allowed_true`` (the user named it): its 16-bit weights lose small updates, which a short run cannot show."""
    by_name = {result.precision: result for result in results}
    baseline = by_name.get(BASELINE)
    if baseline is None or baseline.steps_per_s is None or baseline.final_loss is None:
        return {"precision": None, "reason": "32-true did not run, so no drift can be measured"}
    for result in results:
        if result.final_loss is not None:
            scale = max(abs(baseline.final_loss), 1e-12)
            result.loss_drift = abs(result.final_loss - baseline.final_loss) / scale
        if result.steps_per_s is not None:
            result.speedup_vs_32_true = result.steps_per_s / baseline.steps_per_s
    safe = [
        r
        for r in results
        if r.error is None and r.loss_drift is not None and math.isfinite(r.final_loss or math.nan)
        if r.loss_drift <= tolerance and r.speedup_vs_32_true is not None
    ]
    baseline_max = baseline.steps_per_s_max or baseline.steps_per_s
    faster = [
        r
        for r in safe
        if r.precision != BASELINE and (r.speedup_vs_32_true or 0) >= min_speedup
        if (r.steps_per_s_min or 0) > baseline_max
        if not r.precision.endswith("-true") or r.precision in allowed_true
    ]
    if not faster:
        slower = ", ".join(f"{r.precision} {r.speedup_vs_32_true:.2f}x" for r in safe if r.precision != BASELINE)
        return {
            "precision": BASELINE,
            "reason": f"no precision within {tolerance:.0%} loss drift is {min_speedup:.2f}x faster than 32-true"
            " in the median and faster in every round" + (f" ({slower})" if slower else ""),
        }
    best = max(faster, key=lambda r: r.steps_per_s or 0.0)
    return {
        "precision": best.precision,
        "reason": f"{best.speedup_vs_32_true:.2f}x the steps/s of 32-true with {best.loss_drift:.2%} loss drift"
        f" (tolerance {tolerance:.0%})",
    }


def run_bench(
    model: str,
    accelerator_name: str = "auto",
    steps: int | None = None,
    warmup: int | None = None,
    repeats: int = 3,
    tolerance: float = 0.05,
    min_speedup: float = 1.05,
    precisions: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Measure, summarise and recommend; returns the ``--json`` document. ``time_limit`` (seconds): no run
    starts after it is spent (every precision keeps the rounds it finished; at least one round always runs)."""
    import platform

    import torch

    from prec._version import __version__
    from prec.training.composition import get_registry

    default_steps, default_warmup = MODEL_DEFAULTS.get(model, (50, 5))
    steps = default_steps if steps is None else steps
    warmup = default_warmup if warmup is None else warmup
    if steps < 2 or warmup < 1 or repeats < 1:
        raise ConfigurationError(
            f"--steps must be >= 2, --warmup >= 1, --repeats >= 1; got {steps}, {warmup}, {repeats}."
        )
    factory = resolve_model(model)
    registry = get_registry()
    accelerator, chosen = select_targets(accelerator_name, precisions)
    if BASELINE in chosen:  # the baseline first, then the rest in the registry's order
        chosen.remove(BASELINE)
        chosen.insert(0, BASELINE)
    if threads is not None and threads < 1:
        raise ConfigurationError(f"--threads must be >= 1; got {threads}.")
    if time_limit is not None and not time_limit > 0:
        raise ConfigurationError(f"--time-limit must be > 0 seconds; got {time_limit}.")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    time_limited = False
    build_model(factory, model, seed)  # a factory that returns the wrong thing fails here, before any measuring
    runs: dict[str, list[Run]] = {name: [] for name in chosen}
    errors: dict[str, str] = {}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chosen) * repeats + 1, desc=f"prec bench {model}", disable=not progress, file=sys.stderr)
    try:
        with contextlib.suppress(Exception):  # first-use costs (kernels, allocator, autograd) land in no row
            run_once(factory, model, accelerator, chosen[0], 2, 1, seed)
        bar.update(1)
        for round_index in range(repeats):
            if round_index and deadline is not None and time.monotonic() > deadline:
                time_limited = True
                break
            shift = round_index % len(chosen)  # rotate the order so no precision always runs first
            for name in chosen[shift:] + chosen[:shift]:
                bar.set_postfix_str(name)
                if name not in errors:
                    try:
                        runs[name].append(run_once(factory, model, accelerator, name, steps, warmup, seed))
                    except Exception as error:  # noqa: BLE001 - one failing precision is a row, not a crash
                        errors[name] = f"{type(error).__name__}: {error}"
                bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    results = []
    for name in chosen:
        dtype, emulated = _compute_dtype(registry, name, accelerator)
        native = accelerator.supports_dtype(dtype) and not emulated if dtype is not None else None
        result = summarize(name, runs[name], native) if runs[name] else PrecisionResult(name, native=native)
        result.error = errors.get(name)
        results.append(result)
    auto_name, auto_reason = accelerator.auto_precision()
    allowed_true = [] if precisions is None else [name for name in chosen if name.endswith("-true")]
    recommendation = recommend(results, tolerance, min_speedup, allowed_true)
    return {
        "model": model,
        "accelerator": accelerator.name,
        "device": str(accelerator.get_device(0)),
        "machine": machine_info(),
        "versions": {"prec": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "tolerance": tolerance,
        "min_speedup": min_speedup,
        "threads": torch.get_num_threads() if threads is None else threads,
        "recommendation": recommendation,
        "noise": noise(results),
        "time_limit": time_limit,
        "time_limited": time_limited,
        "auto": {"precision": auto_name, "reason": auto_reason},
        "results": [asdict(result) for result in results],
    }


def noise(results: list[PrecisionResult]) -> dict[str, Any]:
    """Whether the figures are too noisy to trust: one round only, or rounds that spread more than
    :data:`NOISY_SPREAD` around their median, per precision."""
    spreads = {
        r.precision: (max(r.rounds) - min(r.rounds)) / r.steps_per_s for r in results if r.rounds and r.steps_per_s
    }
    noisy = sorted(name for name, spread in spreads.items() if spread > NOISY_SPREAD)
    single = bool(results) and all(len(r.rounds) <= 1 for r in results)
    if single:
        reason = "one round only: there is no spread to judge the noise by; use --repeats 3 or more"
    elif noisy:
        worst = max(spreads[name] for name in noisy)
        reason = f"rounds of {', '.join(noisy)} spread up to {worst:.0%} (more than {NOISY_SPREAD:.0%})"
    else:
        reason = None
    return {"noisy": single or bool(noisy), "reason": reason, "spread": spreads}


def _compute_dtype(registry: Any, name: str, accelerator: Accelerator) -> tuple[torch.dtype | None, bool]:
    """The precision's compute dtype and whether it is emulated here, for the "native" column."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            precision = registry.create_precision(name, accelerator)
    except Exception:  # noqa: BLE001 - only used for the "native" column
        return None, False
    return precision.compute_dtype, bool(precision.emulated)


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide 16-bit speed, so results from different machines are not confused."""
    import platform

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or None}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            text = cpuinfo.read()
        for line in text.splitlines():
            if line.startswith("model name") and "cpu" not in info:
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "bf16", "fphp")
                info["flags"] = sorted(flag for flag in wanted if flag in flags)
                break
    import os

    info["cpu_count"] = os.cpu_count()
    return info


# -- command --------------------------------------------------------------------------------------------------
@click.command("bench")
@click.option(
    "--model",
    "model",
    default="mlp-small",
    show_default=True,
    help=f"{', '.join(BUILTIN_MODELS)}, or package.module:factory returning (TrainingModule, batches).",
)
@click.option("--accelerator", default="auto", show_default=True, help="An installed accelerator name, or auto.")
@click.option("--precision", "precisions", multiple=True, help="Measure only these (repeatable); default: all.")
@click.option("--steps", type=int, default=None, help="Timed steps per run (default depends on the model).")
@click.option("--warmup", type=int, default=None, help="Untimed steps before timing (default depends on the model).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Interleaved rounds per precision.")
@click.option("--tolerance", type=float, default=0.05, show_default=True, help="Max relative loss drift vs 32-true.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch intra-op threads while measuring (default: torch's).")
@click.option(
    "--time-limit", type=float, default=None, help="Seconds after which no further round starts (default: none)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def bench_command(
    model: str,
    accelerator: str,
    precisions: tuple[str, ...],
    steps: int | None,
    warmup: int | None,
    repeats: int,
    tolerance: float,
    seed: int,
    threads: int | None,
    time_limit: float | None,
    as_json: bool,
    progress: bool,
) -> None:
    """Measure every precision available here on a model and recommend the fastest numerically safe one.

    A -true precision other than 32-true is recommended only when named with --precision."""
    try:
        data = run_bench(
            model,
            accelerator,
            steps=steps,
            warmup=warmup,
            repeats=repeats,
            tolerance=tolerance,
            precisions=precisions or None,
            seed=seed,
            threads=threads,
            progress=progress,
            time_limit=time_limit,
        )
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from error
    click.echo(json.dumps(data, indent=2) if as_json else render(data))
