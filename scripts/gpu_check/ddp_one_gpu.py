"""prec's distributed path on one device, started by torchrun with one process (nccl on a GPU, gloo on a cpu).

With one rank nothing can differ between replicas, so the checks are the ones one rank can fail:
  - a DDP fit at bf16-mixed runs on the expected backend and ends where a single-device fit ends (a DDP world of
    one averages over one rank: the weights must agree to within kernel nondeterminism, 1e-6);
  - an FSDP2 fit at bf16-mixed runs and trains (finite weights that moved);
  - with 4 micro-batches per step under ``Strategy.no_gradient_sync``, DDP all-reduces once per step;
  - under FSDP2 at 32-true and at bf16-true with ``master_weights`` "fp32" and "kahan", a run saved after one
    epoch and resumed equals an uninterrupted two-epoch run, bit for bit.

    python -m torch.distributed.run --standalone --nproc-per-node 1 scripts/gpu_check/ddp_one_gpu.py --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset

import prec


class Model(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

    def training_step(self, batch: Any, batch_idx: int = 0) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.body(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader() -> DataLoader:
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def fit(accelerator: str, strategy: str, precision: str, epochs: int = 1, ckpt: Path | None = None,
        **options: Any) -> tuple[prec.Trainer, dict[str, torch.Tensor]]:  # fmt: skip
    trainer = prec.Trainer(
        accelerator=accelerator, strategy=strategy, devices=1, precision=precision, precision_options=options,
        max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
    )  # fmt: skip
    model = Model()
    trainer.fit(model, loader(), ckpt_path=ckpt)
    return trainer, {k: v.detach().cpu().float() for k, v in trainer.strategy.module_state_dict(model).items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def allreduces_per_step(accelerator: str) -> float:
    strategy = prec.Trainer(accelerator=accelerator, strategy="ddp", devices=1, enable_progress_bar=False,
                            logger=False).strategy  # fmt: skip
    wrapped = strategy.setup_module(Model())
    calls = [0]

    def hook(state, bucket):  # type: ignore[no-untyped-def] - DDP rejects any annotation but dist.GradBucket itself
        calls[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    wrapped.register_comm_hook(None, hook)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-3)
    device = strategy.root_device
    x = torch.randn(16, 256, device=device)
    for _ in range(4):
        for micro in range(4):
            with strategy.no_gradient_sync(wrapped) if micro < 3 else contextlib.nullcontext():
                wrapped("training_step", (x, x.sum(1, keepdim=True))).backward()
        optimizer.step()
        optimizer.zero_grad()
    return calls[0] / 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", prec.PerformanceWarning)
    accelerator = args.device
    expected_backend = "nccl" if accelerator == "cuda" else "gloo"
    report: dict[str, Any] = {"world_size": None, "device": None}
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="prec-ddp-check-") as scratch_name:
        scratch = Path(scratch_name)
        _, single = fit(accelerator, "single", "bf16-mixed")
        trainer, ddp = fit(accelerator, "ddp", "bf16-mixed")
        device = trainer.strategy.root_device
        report.update(world_size=dist.get_world_size(), backend=dist.get_backend(), device=str(device))
        if device.type == "cuda":
            report["device_name"] = torch.cuda.get_device_name(device)
        report["ddp_vs_single_max_abs_difference"] = max_difference(ddp, single)
        report["ddp_vs_single_bit_identical"] = report["ddp_vs_single_max_abs_difference"] == 0.0
        checks["backend_is_" + expected_backend] = report["backend"] == expected_backend
        checks["ddp_matches_single_device"] = report["ddp_vs_single_max_abs_difference"] <= 1e-6
        _, fsdp = fit(accelerator, "fsdp", "bf16-mixed")
        initial = {k: v.detach().float() for k, v in Model().state_dict().items()}
        checks["fsdp_trains"] = (
            all(torch.isfinite(v).all() for v in fsdp.values()) and max_difference(fsdp, initial) > 0
        )
        report["allreduce_calls_per_step_with_accumulation_4"] = allreduces_per_step(accelerator)
        checks["one_allreduce_per_step"] = report["allreduce_calls_per_step_with_accumulation_4"] == 1
        for precision, options in (("32-true", {}), *(("bf16-true", {"master_weights": m}) for m in ("fp32", "kahan"))):
            name = "_".join(["fsdp", precision, *options.values(), "resume_equal"])
            _, straight = fit(accelerator, "fsdp", precision, 2, **options)
            first, _ = fit(accelerator, "fsdp", precision, 1, **options)
            first.save_checkpoint(scratch / name)
            _, resumed = fit(accelerator, "fsdp", precision, 2, scratch / name, **options)
            checks[name] = all(torch.equal(straight[k], resumed[k]) for k in straight)
    report["checks"] = checks
    report["ok"] = all(checks.values())
    if dist.get_rank() == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ddp_one_gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
