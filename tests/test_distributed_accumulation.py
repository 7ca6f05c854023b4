"""Gradient accumulation through the Trainer on 2 gloo processes: one gradient reduction per optimizer step.

``Trainer(strategy=..., accumulate_grad_batches=4)`` over 10 batches per rank and epoch: windows of 4, 4 and a
last, partial one of 2 (the epoch's last batch always ends a window and steps the optimizer). The rule counted
here: exactly one reduction per optimizer step, made by the backward of the window's last micro-batch (batches
3, 7 and 9), none for the others, which run inside ``Strategy.no_gradient_sync``. DDP's reductions are counted by
a comm hook the test registers on the Trainer's wrapped model (``on_fit_start``); FSDP2's reduce-scatters by
counting the process-group collective it calls. One plain-script launch (prec starts rank 1) runs both.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import sibling
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.slow

HANG_GUARD_S = 180  # the launch took 11-22 s on 2 busy cores
ACCUMULATE, BATCHES, BATCH, EPOCHS, WORLD = 4, 10, 2, 2, 2

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    import prec

    out = Path(sys.argv[1])
    ACCUMULATE, BATCHES, BATCH, EPOCHS, WORLD = 4, 10, 2, 2, 2


    def data():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(WORLD * BATCHES * BATCH, 8, generator=generator)
        return TensorDataset(x, x @ torch.randn(8, 1, generator=generator))


    class Regression(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)


    class CountReductions(prec.Callback):
        \"\"\"Where (epoch, batch, optimizer step) every gradient reduction of the run happens.\"\"\"

        def __init__(self):
            self.calls = []
            self.where = None
            self.original = None

        def on_fit_start(self, trainer, module):
            wrapped = trainer.state.wrapped_model
            if isinstance(wrapped, DistributedDataParallel):
                wrapped.register_comm_hook(None, self.hook)  # DDP calls it once per gradient bucket it reduces
            else:  # FSDP2 reduce-scatters gradients through this process-group function
                self.original = dist.reduce_scatter_single
                dist.reduce_scatter_single = self.counting

        def hook(self, state, bucket):
            self.calls.append(self.where)
            return default_hooks.allreduce_hook(state, bucket)

        def counting(self, *args, **kwargs):
            self.calls.append(self.where)
            return self.original(*args, **kwargs)

        def on_fit_end(self, trainer, module):
            if self.original is not None:
                dist.reduce_scatter_single = self.original

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.where = [trainer.current_epoch, batch_idx, trainer.global_step]


    if __name__ == "__main__":
        for strategy in ("ddp", "fsdp"):
            counter = CountReductions()
            model = Regression()
            trainer = prec.Trainer(
                accelerator="cpu", strategy=strategy, devices=WORLD, max_epochs=EPOCHS,
                accumulate_grad_batches=ACCUMULATE, callbacks=[counter], enable_progress_bar=False, logger=False,
                enable_checkpointing=False, enable_model_summary=False,
            )
            trainer.fit(model, DataLoader(data(), batch_size=BATCH))
            rank = trainer.global_rank
            torch.save(trainer.strategy.module_state_dict(model), out / f"{strategy}_rank{rank}.pt")
            info = {"calls": counter.calls, "global_step": trainer.global_step}
            (out / f"{strategy}_rank{rank}.json").write_text(json.dumps(info))
    """
)


@pytest.fixture(scope="module")
def accumulation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("accumulation")
    script = out / "worker.py"
    script.write_text(WORKER)
    safety = sibling("test_distributed_safety.py")
    ((code, stderr),), _ = safety.run([([sys.executable, str(script), str(out)], safety.clean_env())], out)
    assert code == 0, stderr
    return out


class Regression(prec.TrainingModule):
    """The worker's model, for the single-process reference."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def single_process() -> dict[str, torch.Tensor]:
    """The same accumulation in one process on the global batch (both ranks' micro-batches together)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * BATCHES * BATCH, 8, generator=generator)
    data = TensorDataset(x, x @ torch.randn(8, 1, generator=generator))
    model = Regression()
    trainer = prec.Trainer(
        accelerator="cpu", devices=1, max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATE,
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=BATCH * WORLD))
    return model.state_dict()


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_reduction_per_optimizer_step(accumulation_run: Path, strategy: str) -> None:
    windows = [3, 7, 9]  # the last micro-batch of each window; 9 ends the partial window of 2
    expected = [[epoch, batch, epoch * len(windows) + k] for epoch in range(EPOCHS) for k, batch in enumerate(windows)]
    for rank in range(WORLD):
        info = json.loads((accumulation_run / f"{strategy}_rank{rank}.json").read_text())
        assert info["global_step"] == EPOCHS * len(windows) == 6
        assert info["calls"] == expected  # 6 reductions for 6 optimizer steps, 20 backwards


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_accumulated_update_is_the_global_batch_update(accumulation_run: Path, strategy: str) -> None:
    state0 = torch.load(accumulation_run / f"{strategy}_rank0.pt")
    state1 = torch.load(accumulation_run / f"{strategy}_rank1.pt")
    reference = single_process()
    for key, value in reference.items():
        assert torch.equal(state0[key], state1[key]), key
        torch.testing.assert_close(state0[key], value, rtol=1e-6, atol=1e-6)  # float rounding only
