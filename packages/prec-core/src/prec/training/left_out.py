"""The Lightning Trainer arguments prec leaves out on purpose, each with why and what to do instead.

A table of prose, kept out of :mod:`prec.training.config` so the checks there stay readable; that module
re-exports :data:`LEFT_OUT`, and :func:`prec.training.config.reject_unknown_arguments` turns a left-out argument into a
:class:`~prec.ConfigurationError` that quotes its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["LEFT_OUT"]

_LIGHTNING_2 = "was removed in Lightning 2.0"
#: Lightning Trainer arguments prec does not take, with why and what to do instead.
LEFT_OUT: Mapping[str, str] = MappingProxyType(
    {
        "amp_backend": f"it {_LIGHTNING_2}; the precision name picks torch autocast: precision='16-mixed'"
        " or 'bf16-mixed'.",
        "amp_level": f"it {_LIGHTNING_2} (NVIDIA apex); use precision='16-mixed' or 'bf16-mixed'.",
        "auto_lr_find": f"it {_LIGHTNING_2} and prec has no tuner; run a short fit per learning rate"
        " (an LR range test).",
        "auto_scale_batch_size": f"it {_LIGHTNING_2} and prec has no tuner; try batch sizes with short fits.",
        "auto_select_gpus": f"it {_LIGHTNING_2}; pass accelerator='gpu', devices=N (or devices=[indices]).",
        "gpus": f"it {_LIGHTNING_2}; pass accelerator='gpu', devices=N.",
        "tpu_cores": f"it {_LIGHTNING_2}; pass accelerator='tpu', devices=N.",
        "ipus": f"it {_LIGHTNING_2}; prec has no IPU accelerator.",
        "num_processes": f"it {_LIGHTNING_2}; pass accelerator='cpu', devices=N.",
        "resume_from_checkpoint": f"it {_LIGHTNING_2}; pass trainer.fit(model, ..., ckpt_path=path).",
        "checkpoint_callback": f"it {_LIGHTNING_2}; pass enable_checkpointing=True/False.",
        "weights_summary": f"it {_LIGHTNING_2}; pass enable_model_summary=True/False.",
        "progress_bar_refresh_rate": f"it {_LIGHTNING_2}; pass enable_progress_bar=True/False.",
        "weights_save_path": f"it {_LIGHTNING_2}; pass ModelCheckpoint(dirpath=...) in callbacks.",
        "replace_sampler_ddp": f"it {_LIGHTNING_2} (renamed use_distributed_sampler), which prec does not take either:"
        " give your loader a DistributedSampler of your own to control sharding.",
        "use_distributed_sampler": "under ddp/fsdp prec always shards a loader's default sampler with a"
        " DistributedSampler; to shard differently, build the loader with your own DistributedSampler,"
        " which prec keeps.",
        "track_grad_norm": f"it {_LIGHTNING_2}; log torch.nn.utils.get_total_norm(...) in on_before_optimizer_step.",
        "terminate_on_nan": f"it {_LIGHTNING_2}; raise in training_step when not torch.isfinite(loss).",
        "stochastic_weight_avg": f"it {_LIGHTNING_2}; use torch.optim.swa_utils in a callback.",
        "truncated_bptt_steps": f"it {_LIGHTNING_2}; split sequences in training_step with manual optimization.",
        "move_metrics_to_cpu": f"it {_LIGHTNING_2}; prec keeps logged metrics as tensors and reads them lazily.",
        "multiple_trainloader_mode": f"it {_LIGHTNING_2}; combine loaders yourself, e.g. zip() them in a dataset.",
        "prepare_data_per_node": f"it {_LIGHTNING_2}.",
        "flush_logs_every_n_steps": f"it {_LIGHTNING_2}; pass log_every_n_steps.",
        "log_gpu_memory": f"it {_LIGHTNING_2}; log torch.cuda.max_memory_allocated() yourself.",
        "process_position": f"it {_LIGHTNING_2}.",
        "profiler": "prec has no profiler integration; wrap trainer.fit(...) in torch.profiler.profile(...).",
        "sync_batchnorm": "prec does not convert your model; call model = torch.nn.SyncBatchNorm"
        ".convert_sync_batchnorm(model) before fit(), under strategy='ddp'.",
        "inference_mode": "validate(), test() and predict() always run under torch.inference_mode(); for gradients"
        " there, enable them inside the step with torch.inference_mode(False) and torch.enable_grad().",
        "barebones": "prec is lean already; pass logger=False, enable_progress_bar=False, enable_checkpointing=False"
        " and enable_model_summary=False.",
        "detect_anomaly": "wrap trainer.fit(...) in `with torch.autograd.detect_anomaly():`.",
        "max_time": "prec has no wall-clock limit; use a Callback that sets trainer.should_stop = True at the"
        " deadline.",
        "model_registry": "prec has no model registry integration; upload the checkpoint files yourself.",
        "enable_autolog_hparams": "prec logs hyperparameters when the module calls self.save_hyperparameters();"
        " to log other values, call logger.log_hyperparams({...}) yourself.",
    }
)
