"""``prec plan MODEL --precision P``: measure a model in float32 and say which of its layers a precision needs to
treat specially, each with its reason (:func:`prec.numerics.measure`, :func:`prec.numerics.make_plan`).

MODEL is ``package.module:factory`` (or a built-in bench model) returning a model, or ``(model, batches)`` as
``prec bench``'s factories do. The loss is the model's ``training_step(batch, batch_idx)`` (a
:class:`prec.TrainingModule`; what it logs goes nowhere) and the lost-update measurement uses the optimizer class
and settings ``configure_optimizers`` returns; any other ``torch.nn.Module`` is measured on the mean square of its
output, and the plan then cannot judge ``master_weights``. ``--batch package.module:function`` returns one batch per
call (one call per measured step) instead of the factory's batches.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from prec.cli.bench_models import BUILTIN_MODELS, resolve_model
from prec.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

    from prec.numerics import Measurements, Plan

__all__ = ["make_model_plan", "plan_command", "render_plan"]

WIDTH = 80
_DECISION, _MODULE = 14, 22


class _Detached:
    """What a TrainingModule measured outside a Trainer logs into: a metric store nobody reads."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from prec.training.metrics import MetricStore

        self.state = SimpleNamespace(metrics=MetricStore())


def _loss_function(model: torch.nn.Module) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    from prec.model.module import TrainingModule
    from prec.training.epoch import extract_loss

    if isinstance(model, TrainingModule):
        detached = _Detached()
        calls = iter(range(1 << 62))

        def training_loss(copy: torch.nn.Module, batch: Any) -> torch.Tensor:
            copy.__dict__["_prec_trainer"] = detached
            loss = extract_loss(copy.training_step(batch, next(calls)))  # type: ignore[operator]
            if loss is None:
                raise ConfigurationError("MODEL: training_step returned None, so there is no loss to measure.")
            return loss

        return training_loss

    def output_square(copy: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        output = copy(inputs)
        output = output[0] if isinstance(output, (tuple, list)) else output
        return output.float().square().mean()

    return output_square


def _optimizer_factory(model: torch.nn.Module) -> Callable[..., Any] | None:
    """The optimizer class and settings of ``configure_optimizers``, for fresh parameters."""
    from prec.model.module import TrainingModule
    from prec.numerics.updates import constructor_defaults
    from prec.training.optim import parse_optimizers

    if not isinstance(model, TrainingModule):
        return None
    optimizers, _ = parse_optimizers(model.configure_optimizers())
    if not optimizers:
        return None
    optimizer = optimizers[0]
    kind, defaults = type(optimizer), constructor_defaults(optimizer)
    return lambda parameters: kind(parameters, **defaults)


def _built(factory: Callable[[], Any], spec: str, seed: int) -> tuple[torch.nn.Module, list[Any]]:
    import torch

    torch.manual_seed(seed)
    built = factory()
    model, batches = (built[0], list(built[1])) if isinstance(built, tuple) and len(built) == 2 else (built, [])
    if not isinstance(model, torch.nn.Module):
        raise ConfigurationError(
            f"MODEL {spec!r}: the factory must return a torch.nn.Module or (module, batches); got {type(built)}."
        )
    return model, batches


def make_model_plan(
    model: str, precision: str, batch: str | None = None, steps: int = 2, seed: int = 0
) -> tuple[Plan, Measurements, float]:
    """Measure MODEL and plan ``precision``: the plan, the measurements and the seconds the measurement took."""
    from prec.numerics import formats_for_precision, make_plan, measure
    from prec.numerics.planner import plan_formats

    formats_for_precision(precision, argument="--precision")
    if steps < 1:
        raise ConfigurationError(f"--steps={steps} must be >= 1.")
    module, batches = _built(resolve_model(model, label="MODEL"), model, seed)
    if batch is not None:
        source: Any = resolve_model(batch, label="--batch")
    elif batches:
        queue = iter(batches * steps)
        source = lambda: next(queue)  # noqa: E731 - one batch per measured step, cycling
    else:
        raise ConfigurationError(
            f"MODEL {model!r} returned no batches: return (model, batches) from the factory or pass --batch."
        )
    started = time.perf_counter()
    measurements = measure(
        module,
        source,
        _loss_function(module),
        formats=plan_formats(precision) or formats_for_precision(precision).forward,
        steps=steps,
        precision=precision,
        optimizer=_optimizer_factory(module),
    )
    seconds = time.perf_counter() - started
    return make_plan(measurements, precision), measurements, seconds


def render_plan(plan: Plan, measurements: Measurements, seconds: float) -> str:
    """The plan as a table no wider than 80 columns: decision, module, reason (wrapped)."""
    room = WIDTH - _DECISION - _MODULE - 2
    rows = [("keep_float32", item.module, item.reason) for item in plan.keep_float32]
    rows += [("fp8_exclude", item.module, item.reason) for item in plan.fp8_exclude]
    if plan.master_weights is not None:
        rows.append((f"master={plan.master_weights.mode}", "(model)", plan.master_weights.reason))
    optimizer = measurements.optimizer or "no optimizer"
    lines = [f"plan for {plan.precision}: {len(measurements.layers)} layers, {measurements.steps} float32 steps"
             f" ({optimizer}), measured in {seconds:.1f} s"]  # fmt: skip
    lines += [f"{'decision':<{_DECISION}} {'module':<{_MODULE}} reason", "-" * WIDTH]
    for decision, module, reason in rows:
        name = module or "(root)"
        name = name if len(name) <= _MODULE else "..." + name[len(name) - _MODULE + 3 :]
        wrapped = textwrap.wrap(reason, room) or [""]
        lines.append(f"{decision[:_DECISION]:<{_DECISION}} {name:<{_MODULE}} {wrapped[0]}")
        lines += [" " * (_DECISION + _MODULE + 2) + more for more in wrapped[1:]]
    if not rows:
        lines.append("nothing to change: every measured layer takes this precision as it is")
    for note in plan.notes:
        lines += textwrap.wrap(f"note: {note}", WIDTH, subsequent_indent="  ")
    options = plan.precision_options()
    if options:
        lines += textwrap.wrap(f"precision_options: {options!r}", WIDTH, subsequent_indent="  ")
    return "\n".join(line.rstrip() for line in lines)


@click.command(
    "plan",
    help=f"Measure MODEL (package.module:factory returning a model or (model, batches), or one of"
    f" {', '.join(BUILTIN_MODELS)}) in float32 and print which layers --precision must keep in float32 or out"
    " of fp8, and whether it needs master weights, each with its reason.",
)
@click.argument("model")
@click.option("--precision", required=True, help="The precision to plan for: 16-mixed, bf16-mixed, bf16-true, ...")
@click.option("--batch", default=None, help="package.module:function returning one batch per call.")
@click.option("--steps", type=int, default=2, show_default=True, help="Float32 steps measured.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan's JSON document instead of a table.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write the plan file here.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the error heatmap (matplotlib).")
def plan_command(
    model: str,
    precision: str,
    batch: str | None,
    steps: int,
    seed: int,
    as_json: bool,
    output: str | None,
    plot: str | None,
) -> None:
    from prec.cli._reporting import reported

    try:
        with reported():
            plan, measurements, seconds = make_model_plan(model, precision, batch, steps, seed)
            if plot is not None:
                from prec.numerics import plot_heatmap

                plot_heatmap(measurements, plot)
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from error
    if output is not None:
        plan.save(output)
    click.echo(plan.to_json().rstrip() if as_json else render_plan(plan, measurements, seconds))
