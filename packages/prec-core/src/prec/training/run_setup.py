"""Setting a run up and tearing it down, the same for every stage, in Lightning's order."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from prec._warnings import warn
from prec.errors import PrecWarning
from prec.loggers._protocol import call_optional
from prec.precision.conversion import check_conversion, floating_parameter_dtypes
from prec.training.checkpointing import load_checkpoint
from prec.training.hook_calls import refuse_uncalled_overrides
from prec.training.logging import finalize_logs, flush_logs

if TYPE_CHECKING:
    from prec.model.datamodule import StageData
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView


def setup_model(trainer: TrainerView, model: TrainingModule, stage: str) -> None:
    """Loggers, the precision's global settings, ``setup`` hooks, then ``configure_model`` under the init context,
    precision conversion, checks and placement; for validate/test/predict, the weights of ``ckpt_path``."""
    refuse_uncalled_overrides(trainer, model)
    strategy = trainer.strategy
    if trainer.log_sink is not None:
        trainer.log_sink.setup(trainer.default_root_dir, strategy.is_global_zero)
        if strategy.is_global_zero and model.hparams:
            call_optional(trainer.log_sink, "log_hyperparams", dict(model.hparams))
    precision = trainer.precision_plugin
    precision.setup()
    for callback in trainer.callbacks:
        callback.setup(trainer, model, stage)
    model.setup(stage)
    with trainer.init_module():
        model.configure_model()
    before = floating_parameter_dtypes(model)
    precision.convert_module(model)
    check_conversion(precision, model, before, trainer.registry.describe(precision))
    precision.setup_module(model)
    precision.guard.watch(model)
    precision.guard.step_source = lambda: trainer.global_step
    trainer.state.wrapped_model = strategy.setup_module(model)
    if stage != "fit" and trainer.state.ckpt_path is not None:
        load_checkpoint(trainer, model, trainer.state.ckpt_path, stage)


def teardown_run(trainer: TrainerView, model: TrainingModule, stage: str, data: StageData, failed: bool) -> None:
    """Runs once per run, also after an exception: the data's and the hooks' teardown, the logs, then the
    precision's and strategy's teardown. Every step runs; the first error is raised at the end."""
    errors: list[BaseException] = []
    for step in (
        data.teardown,
        *(partial(callback.teardown, trainer, model, stage) for callback in trainer.callbacks),
        partial(model.teardown, stage),
        partial(flush_logs, trainer, stage == "fit"),
        partial(finalize_logs, trainer, "failed" if failed else "success"),
        trainer.precision_plugin.teardown,
        trainer.strategy.teardown,
    ):
        try:
            step()
        except Exception as error:  # noqa: BLE001 - finish tearing down, then report
            errors.append(error)
    trainer.state.finish(interrupted=failed or bool(errors))
    if errors:
        raise errors[0]


def announce(trainer: TrainerView) -> None:
    """At fit start, on rank zero: one line saying which precision runs and which distribution provides it, and
    what ``precision="auto"`` picked and why. Logged on the ``prec`` logger; printed to stderr too when the
    progress bar is on (an interactive run)."""
    if not trainer.is_global_zero:
        return
    lines = [f"prec: {describe_precision(trainer)}"]
    if trainer.auto_precision_reason is not None:
        lines.append(
            f"precision='auto' picked {trainer.precision!r} on {trainer.accelerator.name}:"
            f" {trainer.auto_precision_reason}"
        )
    log = logging.getLogger("prec")
    for line in lines:
        log.info(line)
    if trainer.enable_progress_bar:
        print("\n".join(lines), file=sys.stderr)


def describe_precision(trainer: TrainerView) -> str:
    """What the registry says about the precision in use: its name and the plugin, distribution and version
    that built it (or that it was passed in as an instance)."""
    return f"{trainer.registry.describe(trainer.precision_plugin)} on {trainer.accelerator.name}"


@contextlib.contextmanager
def cudnn_benchmark(benchmark: bool | None, deterministic: Any) -> Iterator[None]:
    """``Trainer(benchmark=...)`` for one run: ``torch.backends.cudnn.benchmark`` set, and restored afterwards;
    ``None`` leaves it (:class:`prec.Deterministic` turns it off under ``deterministic=True``, as Lightning does).
    Enter it inside ``Deterministic`` so that an explicit ``benchmark=True`` wins, with Lightning's warning."""
    if benchmark is None:
        yield
        return
    if benchmark and deterministic:
        warn(
            f"benchmark=True with deterministic={deterministic!r}: torch ignores cudnn.deterministic while"
            " cudnn.benchmark is on, so cuDNN may pick non-deterministic algorithms. Pass benchmark=None or False.",
            PrecWarning,
        )
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class SkipInit(TorchFunctionMode):
    """Skip ``torch.nn.init`` functions: parameters keep their uninitialised memory (for ``empty_init``)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs.get("tensor", args[0] if args else None)
        return func(*args, **kwargs)
