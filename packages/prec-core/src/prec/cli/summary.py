"""``prec summary MODEL``: what a model costs in memory under each precision, before you train it.

The model is a built-in bench model or ``package.module:factory`` returning ``(TrainingModule, batches)`` (the
same target as ``prec bench``). Without ``--steps`` nothing runs: the optimizer state is estimated from the type
``configure_optimizers`` returns. With ``--steps N`` the Trainer runs N steps first, so the state is measured and,
on CUDA, the peak memory of those steps is reported.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import click

from prec.cli.bench_models import BUILTIN_MODELS, build_model, resolve_model, select_targets
from prec.errors import ConfigurationError, PerformanceWarning

if TYPE_CHECKING:
    from prec.training.summary import ModelSummary

__all__ = ["parse_option", "summarize_precisions", "summary_command"]


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON (``true``, ``3``, ``["LayerNorm"]``), else as a string."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise ConfigurationError(f"--option {text!r} is not KEY=VALUE (e.g. --option master_weights=fp32).")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def summarize_precisions(
    model: str,
    accelerator_name: str = "auto",
    precisions: list[str] | None = None,
    options: dict[str, Any] | None = None,
    steps: int = 0,
    seed: int = 0,
) -> tuple[str, list[ModelSummary]]:
    """The accelerator's name and one summary per precision (default: every precision available there)."""
    from prec.plugin.registry import precision_order

    if steps < 0:
        raise ConfigurationError(f"--steps={steps} must be >= 0.")
    factory = resolve_model(model, label="MODEL")
    accelerator, chosen = select_targets(accelerator_name, precisions or None)
    if not precisions:
        chosen.sort(key=precision_order)
    summaries = []
    for name in chosen:
        try:
            summaries.append(_summarize_one(factory, model, seed, accelerator.name, name, options or {}, steps))
        except ConfigurationError as error:
            if options and not precisions:
                hint = "--option applies to every precision shown: name them with --precision"
                raise ConfigurationError(f"{error} ({hint})") from error
            raise
    return accelerator.name, summaries


def _summarize_one(
    factory: Any, model: str, seed: int, accelerator: str, name: str, options: dict[str, Any], steps: int
) -> ModelSummary:
    """One precision's summary: estimated on the built model, or measured after ``steps`` Trainer steps."""
    import torch

    from prec.trainer import Trainer
    from prec.training.composition import get_precision
    from prec.training.summary import summarize

    module, batches = build_model(factory, model, seed, label="MODEL")
    if not steps:
        with warnings.catch_warnings():  # nothing runs: a precision's speed warning does not apply
            warnings.simplefilter("ignore", PerformanceWarning)
            precision = get_precision(name, accelerator, **options)
        return summarize(module, precision, _first_optimizer(module.configure_optimizers()))
    trainer = Trainer(
        accelerator=accelerator, devices=1, precision=name, precision_options=options or None, max_steps=steps,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, logger=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    cuda = accelerator == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, batches)
    optimizers = trainer.optimizers
    return summarize(
        module,
        trainer.precision_plugin,
        optimizers[0] if optimizers else None,
        cuda_device=torch.cuda.current_device() if cuda else None,
    )


def _first_optimizer(configured: Any) -> Any:
    """The first optimizer of whatever ``configure_optimizers`` returned (Lightning's accepted shapes)."""
    import torch

    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return _first_optimizer(configured.get("optimizer"))
    if isinstance(configured, (list, tuple)) and configured:
        return _first_optimizer(configured[0])
    return None


def render(accelerator: str, summaries: list[ModelSummary], steps: int) -> str:
    """One row per precision, one column per kind of bytes."""
    from prec.training.summary import format_bytes

    header = ["precision", "parameters", "weights", "gradients", "optimizer state", "extras", "total", "B/param"]
    rows = [
        [
            s.precision,
            " + ".join(f"{count:,} {dtype}" for dtype, count in sorted(s.parameters_by_dtype.items())),
            format_bytes(s.weight_bytes),
            format_bytes(s.gradient_bytes),
            "unknown" if s.optimizer_state_bytes is None else format_bytes(s.optimizer_state_bytes),
            format_bytes(sum(s.extras.values())),
            format_bytes(s.total_bytes),
            f"{s.bytes_per_parameter():.1f}",
        ]
        for s in summaries
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    state = f"measured after {steps} steps" if steps else "estimated from the optimizer type"
    lines.append(f"\non {accelerator}; optimizer state {state}.")
    extras = sorted({name for s in summaries for name in s.extras})
    if extras:
        lines.append(f"extras: {', '.join(extras)}.")
    peaks = [(s.precision, s.cuda_peak_bytes) for s in summaries if s.cuda_peak_bytes is not None]
    lines += [f"CUDA peak over the first steps, {name}: {format_bytes(peak)}" for name, peak in peaks]
    return "\n".join(lines)


@click.command(
    "summary",
    help=f"Memory per precision for MODEL: {', '.join(BUILTIN_MODELS)}, or package.module:factory returning"
    " (TrainingModule, batches). Optimizer state is estimated from its type, or measured with --steps.",
)
@click.argument("model")
@click.option("--accelerator", default="auto", show_default=True, help="An installed accelerator name, or auto.")
@click.option("--precision", "precisions", multiple=True, help="Only these (repeatable); default: all available.")
@click.option("--option", "raw_options", multiple=True, help="A precision option KEY=VALUE (repeatable).")
@click.option("--steps", type=int, default=0, show_default=True, help="Train this many steps first (measured).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def summary_command(
    model: str,
    accelerator: str,
    precisions: tuple[str, ...],
    raw_options: tuple[str, ...],
    steps: int,
    seed: int,
    as_json: bool,
) -> None:
    from prec.cli._reporting import reported  # its warnings are printed by the CLI, as every command's

    try:
        options = dict(parse_option(text) for text in raw_options)
        with reported():
            name, summaries = summarize_precisions(model, accelerator, list(precisions), options, steps, seed)
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from error
    if as_json:
        click.echo(json.dumps({"accelerator": name, "steps": steps, "precisions": [s.as_dict() for s in summaries]}))
    else:
        click.echo(render(name, summaries, steps))
