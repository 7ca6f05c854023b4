"""Sharded resume through the Trainer (``strategy="fsdp"``, ``fit(ckpt_path=<sharded directory>)``) at 32-true,
bf16-mixed and 16-mixed, on 2 gloo processes.

Per precision: 2 uninterrupted epochs, against 1 epoch, ``trainer.save_checkpoint`` (a sharded DCP directory),
then a fresh Trainer and a model with other weights, under another RNG state, resumed to 2 epochs. Adam, dropout
(each rank its own draws) and a shuffled loader (the sampler's epoch after the resume) make every restored piece
count. Measured here: the resumed run is bit for bit the uninterrupted one at every precision, so the test asks
for ``torch.equal`` on every weight and Adam state and for the same loss scale. Why exact: under the mixed
precisions the shards stay float32 (FSDP's policy casts only for compute), the checkpoint restores those shards,
Adam's moments, each rank's RNG, the loop counters and the grad scaler's state, and the resumed steps run the
same kernels on the same inputs; nothing is recomputed in 16 bits at the resume.

``precision="16-mixed"`` is not offered on cpu (``prec list``: cuda only), so the 16-mixed run uses a
``MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True)`` plugin, CPU float16 autocast with a grad scaler
(under fsdp torch's ``ShardedGradScaler``), as the FSDP tests do. Its scale grows every 3 steps, so a scaler
state not restored shows as another final scale. The launch helpers are the sharded-checkpoint tests'.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from _modules import sibling

pytestmark = pytest.mark.slow

HANG_GUARD_S = 300  # the launch took 15-33 s on 2 busy cores
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])


    def data():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(32, 8, generator=generator)
        return TensorDataset(x, x @ torch.randn(8, 1, generator=generator))


    class Net(prec.TrainingModule):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.inner = torch.nn.Linear(8, 16)
            self.drop = torch.nn.Dropout(0.25)
            self.outer = torch.nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            prediction = self.outer(self.drop(torch.relu(self.inner(x))))
            return torch.nn.functional.mse_loss(prediction.float(), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)


    def precision_options(precision):
        if precision == "16-mixed":  # not registered for cpu: CPU float16 autocast with a grad scaler
            half = prec.MixedPrecision(
                "16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10, growth_interval=3
            )
            return {"plugins": [half]}
        return {"precision": precision}


    def fit(precision, epochs, seed, ckpt_path=None):
        model = Net(seed)
        trainer = prec.Trainer(
            accelerator="cpu", strategy="fsdp", devices=2, max_epochs=epochs, enable_progress_bar=False,
            logger=False, enable_checkpointing=False, enable_model_summary=False, **precision_options(precision),
        )
        trainer.fit(model, DataLoader(data(), batch_size=4, shuffle=True), ckpt_path=ckpt_path)
        return trainer, model


    def record(trainer, model, name):
        weights = trainer.strategy.module_state_dict(model)  # collectives: every rank gathers
        adam = trainer.strategy.optimizer_state_dict(trainer.optimizers[0])["state"]
        scaler = trainer.precision_plugin.scaler
        if rank == 0:
            torch.save({"weights": weights, "adam": adam}, out / f"{name}.pt")
        info = {"global_step": trainer.global_step, "scale": None if scaler is None else scaler.get_scale()}
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(info))


    for precision in os.environ["RESUME_PRECISIONS"].split(","):
        torch.manual_seed(1234 + rank)  # dropout: each rank its own draws
        trainer, model = fit(precision, 2, seed=0)
        record(trainer, model, f"{precision}_straight")

        torch.manual_seed(1234 + rank)
        trainer, model = fit(precision, 1, seed=0)
        path = out / f"{precision}.ckpt"
        trainer.save_checkpoint(path)
        torch.manual_seed(99)  # the resumed run may depend only on the checkpoint: not this RNG, not its weights
        trainer, model = fit(precision, 2, seed=7, ckpt_path=path)
        record(trainer, model, f"{precision}_resumed")
    """
)


@pytest.fixture(scope="module")
def resume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sharded = sibling("test_distributed_sharded.py")  # its 2-process launch and hang guard
    out = tmp_path_factory.mktemp("sharded_precision")
    script = out / "worker.py"
    script.write_text(WORKER)
    processes = sharded.launch_two(script, out, {"RESUME_PRECISIONS": ",".join(PRECISIONS)})
    try:
        results = sharded.finish(processes, timeout=HANG_GUARD_S)
    except Exception as error:  # subprocess.TimeoutExpired: the guard killed them
        pytest.fail(f"the 2-process run did not finish within {HANG_GUARD_S} s: {error}")
    for code, stderr in results:
        assert code == 0, stderr
    return out


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_sharded_resume_equals_the_uninterrupted_run(resume_run: Path, precision: str) -> None:
    straight = torch.load(resume_run / f"{precision}_straight.pt")
    resumed = torch.load(resume_run / f"{precision}_resumed.pt")
    assert straight["weights"].keys() == resumed["weights"].keys()
    for key, value in straight["weights"].items():
        assert value.dtype == torch.float32, key  # float32 shards under the mixed precisions
        assert torch.equal(resumed["weights"][key], value), key
    assert straight["adam"].keys() == resumed["adam"].keys()
    for index, state in straight["adam"].items():
        for name, value in state.items():
            assert torch.equal(resumed["adam"][index][name], value), (index, name)
    for rank in range(2):
        straight_info = json.loads((resume_run / f"{precision}_straight_rank{rank}.json").read_text())
        resumed_info = json.loads((resume_run / f"{precision}_resumed_rank{rank}.json").read_text())
        assert straight_info == resumed_info  # global step and loss scale
        assert straight_info["global_step"] == 8
    if precision == "16-mixed":
        assert resumed_info["scale"] == 2.0**12  # grown twice in 8 steps (every 3): the restored scaler kept count
