"""One stage of a run (fit, validate, test, predict) in this process: set-up, the stage's loop, tear-down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prec.seed import Deterministic
from prec.training import evaluation, loops
from prec.training.fit_data import validation_wanted
from prec.training.run_setup import cudnn_benchmark, setup_model, teardown_run

if TYPE_CHECKING:
    from prec.model.datamodule import StageData
    from prec.model.module import TrainingModule
    from prec.model.trainer_view import TrainerView


def run_stage(trainer: TrainerView, stage: str, model: TrainingModule, ckpt_path: Any, data: StageData) -> Any:
    """One stage in this process (the strategy decides how many run it): the data's hooks, set-up, the loop,
    tear-down, under the run's ``deterministic`` setting."""
    trainer.state.start(stage, model, ckpt_path)
    trainer.datamodule = data.datamodule
    if data.datamodule is not None:
        data.datamodule.trainer = trainer
    object.__setattr__(model, "_prec_trainer", trainer)  # plain attribute: no nn.Module bookkeeping
    failed = True
    try:
        with Deterministic(trainer.deterministic), cudnn_benchmark(trainer.settings.benchmark, trainer.deterministic):
            trainer.strategy.setup_environment()
            strategy = trainer.strategy
            data.prepare(local_rank=strategy.local_rank, global_rank=strategy.global_rank, barrier=strategy.barrier)
            setup_model(trainer, model, stage)
            validation = stage != "fit" or validation_wanted(trainer, model, data)
            loaders = data.loaders(
                worker_rank=strategy.global_rank,
                validation=validation,
                validation_first=stage == "fit" and trainer.num_sanity_val_steps != 0,
            )
            if stage == "fit":
                result = loops.run_fit(trainer, model, *loaders, data=data)
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
