"""On a real GPU: the non-finite guard adds no host-device synchronisation per step where the optimizer can skip
on the device, and still keeps inf/NaN out of the weights (run by gpu_check.sh; skipped without a GPU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.cuda


class Net(prec.TrainingModule):
    def __init__(self, bad_step: int = -1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 64)
        self.bad_step, self.calls = bad_step, 0

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.layer(x).float().square().mean()
        self.calls += 1
        return loss * float("inf") if self.calls - 1 == self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(256, 64)), batch_size=16)


def syncs_during_fit(precision: str, nonfinite: str) -> tuple[int, int]:
    """Synchronising CUDA calls during one fit (torch's sync debug mode warns once per such call), and steps."""
    trainer = prec.Trainer(
        accelerator="cuda",
        precision=precision,
        max_epochs=1,
        enable_progress_bar=False,
        logger=False,
        nonfinite=nonfinite,
    )
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(512, 64)), batch_size=8))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught), trainer.global_step


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_the_guard_adds_no_sync_per_step_with_a_fused_optimizer(precision: str) -> None:
    baseline, steps = syncs_during_fit(precision, "off")
    guarded, _ = syncs_during_fit(precision, "skip")
    lazy_reads = steps // prec.NonFinitePolicy().warn_after + 1  # the skip flags are read every warn_after steps
    assert steps == 64
    assert guarded - baseline <= lazy_reads, f"{guarded - baseline} syncs added over {steps} steps"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_nonfinite_step_is_skipped_on_the_device(precision: str) -> None:
    model = Net(bad_step=3)
    trainer = prec.Trainer(
        accelerator="cuda", precision=precision, max_epochs=1, enable_progress_bar=False, logger=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PrecWarning)
        trainer.fit(model, loader())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert trainer.precision_plugin.skipped_steps == 1
