"""Setting a run up and tearing it down, the same for every stage, in Lightning's order."""

from __future__ import annotations

import logging
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from torch.overrides import TorchFunctionMode

from prec.checkpoint import load_checkpoint
from prec.hooks import refuse_uncalled_overrides
from prec.loggers import finalize_logs, flush_logs
from prec.loggers._protocol import call_optional
from prec.seed import Deterministic

if TYPE_CHECKING:
    from prec.datamodule import StageData
    from prec.module import TrainingModule
    from prec.trainer import Trainer


def setup_model(trainer: Trainer, model: TrainingModule, stage: str) -> None:
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
    precision.convert_module(model)
    precision.setup_module(model)
    precision.guard.watch(model)
    precision.guard.step_source = lambda: trainer.global_step
    trainer.state.wrapped_model = strategy.setup_module(model)
    if stage != "fit" and trainer.state.ckpt_path is not None:
        load_checkpoint(trainer, model, trainer.state.ckpt_path, stage)


def teardown_run(trainer: Trainer, model: TrainingModule, stage: str, data: StageData, failed: bool) -> None:
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
    trainer.state.finish()
    if errors:
        raise errors[0]


def announce(trainer: Trainer) -> None:
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


def describe_precision(trainer: Trainer) -> str:
    """What the registry says about the precision in use: its name and the plugin, distribution and version
    that built it (or that it was passed in as an instance)."""
    return f"{trainer.registry.describe(trainer.precision_plugin)} on {trainer.accelerator.name}"


def apply_run_defaults(trainer: Trainer) -> None:
    """What a Trainer adds on its own, as Lightning does: ``fast_dev_run``'s limits, a :class:`prec.ModelCheckpoint`
    (``enable_checkpointing``) and the tqdm progress bar (``enable_progress_bar``) unless callbacks hold them."""
    from prec.errors import ConfigurationError
    from prec.model_checkpoint import ModelCheckpoint
    from prec.progress import ProgressBarCallback, TQDMProgressBar

    if trainer.fast_dev_run:  # n batches of every stage, once, touching nothing on disk
        runs = trainer.fast_dev_run
        trainer.limit_train_batches = trainer.limit_val_batches = runs
        trainer.limit_test_batches = trainer.limit_predict_batches = runs
        trainer.max_epochs, trainer.max_steps, trainer.min_epochs, trainer.min_steps = 1, runs, None, None
        trainer.num_sanity_val_steps, trainer.val_check_interval, trainer.check_val_every_n_epoch = 0, None, 1
        trainer.log_sink = trainer.logger = None
        trainer.enable_checkpointing = False
    if trainer.enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks):
        trainer.callbacks.append(ModelCheckpoint())
    bars = [c for c in trainer.callbacks if isinstance(c, ProgressBarCallback)]
    if bars and not trainer.enable_progress_bar:
        raise ConfigurationError(
            f"enable_progress_bar=False, but callbacks holds {type(bars[0]).__name__}; drop one of them."
        )
    if trainer.enable_progress_bar and not bars:
        trainer.callbacks.append(TQDMProgressBar())


def run_stage(trainer: Trainer, stage: str, model: TrainingModule, ckpt_path: Any, data: StageData) -> Any:
    """One stage in this process (the strategy decides how many run it): the data's hooks, set-up, the loop,
    tear-down, under the run's ``deterministic`` setting."""
    from prec import evaluation, loops

    trainer.state.start(stage, model, ckpt_path)
    trainer.datamodule = data.datamodule
    if data.datamodule is not None:
        data.datamodule.trainer = trainer
    object.__setattr__(model, "_prec_trainer", trainer)  # plain attribute: no nn.Module bookkeeping
    failed = True
    try:
        with Deterministic(trainer.deterministic):
            trainer.strategy.setup_environment()
            strategy = trainer.strategy
            data.prepare(local_rank=strategy.local_rank, global_rank=strategy.global_rank, barrier=strategy.barrier)
            setup_model(trainer, model, stage)
            loaders = data.loaders(worker_rank=strategy.global_rank)
            if stage == "fit":
                result = loops.run_fit(trainer, model, *loaders)
            elif stage == "predict":
                result = evaluation.run_predict(trainer, model, *loaders)
            else:
                result = evaluation.run_evaluation(trainer, model, *loaders, stage)
            failed = False
            return result
    except BaseException as exception:
        for callback in trainer.callbacks:
            callback.on_exception(trainer, model, exception)
        raise
    finally:
        teardown_run(trainer, model, stage, data, failed)


class SkipInit(TorchFunctionMode):
    """Skip ``torch.nn.init`` functions: parameters keep their uninitialised memory (for ``empty_init``)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs.get("tensor", args[0] if args else None)
        return func(*args, **kwargs)
