"""ModelCheckpoint(monitor=...) on 2 gloo processes whose ranks log different values for the monitored metric.

Each rank's value is its own (``sync_dist=False``), and the two ranks disagree on which epoch is best, and on the
file names (the filename formats the value). The decisions must be rank 0's on every rank (as in Lightning), the
files on disk the ones rank 0 chose, and rank 0 warns once that the metric is not synchronised. One plain-script
launch (prec starts rank 1) runs the scenario under ``ddp`` and under ``fsdp`` (whose checkpoints are
directories).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from _modules import sibling

pytestmark = pytest.mark.slow

HANG_GUARD_S = 180  # the launch took 10-16 s on 2 busy cores

WORKER = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec

    out = Path(sys.argv[1])
    # Per rank and epoch: rank 0 ranks epoch 1 best, then epoch 2; rank 1 ranks epoch 0 best, then epoch 2.
    SCORES = {0: [3.0, 1.0, 2.0], 1: [1.0, 3.0, 2.0]}


    class Model(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            trainer = self.trainer
            own = SCORES[trainer.global_rank][trainer.current_epoch]
            self.log("own_score", own, on_step=False, on_epoch=True, sync_dist=False)
            self.log("shared_score", own, on_step=False, on_epoch=True)  # reduced over the ranks: 2, 2, 2
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    def describe(callback):
        return {
            "best_model_path": callback.best_model_path,
            "best_model_score": callback.best_model_score,
            "kth_best_model_path": callback.kth_best_model_path,
            "best_k_models": callback.best_k_models,
            "files": sorted(p.name for p in Path(callback.dirpath).iterdir() if not p.name.startswith(".")),
        }


    if __name__ == "__main__":
        data = DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=2)
        for strategy in ("ddp", "fsdp"):
            own = prec.ModelCheckpoint(
                dirpath=out / strategy / "own", filename="{epoch}-{own_score:.1f}", monitor="own_score", save_top_k=2
            )
            shared = prec.ModelCheckpoint(dirpath=out / strategy / "shared", monitor="shared_score", save_top_k=2)
            trainer = prec.Trainer(
                accelerator="cpu", strategy=strategy, devices=2, max_epochs=3, enable_progress_bar=False,
                logger=False, callbacks=[own, shared], enable_model_summary=False,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.fit(Model(), data)
            messages = [str(w.message) for w in caught if issubclass(w.category, prec.PrecWarning)]
            info = {"own": describe(own), "shared": describe(shared), "warnings": messages}
            (out / f"{strategy}_rank{trainer.global_rank}.json").write_text(json.dumps(info))
    """
)


@pytest.fixture(scope="module")
def monitor_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitor")
    script = out / "worker.py"
    script.write_text(WORKER)
    safety = sibling("test_distributed_safety.py")
    ((code, stderr),), _ = safety.run([([sys.executable, str(script), str(out)], safety.clean_env())], out)
    assert code == 0, stderr
    return out


def _ranks(out: Path, strategy: str) -> list[dict[str, object]]:
    return [json.loads((out / f"{strategy}_rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_every_rank_takes_rank_zeros_decisions(monitor_run: Path, strategy: str) -> None:
    rank0, rank1 = _ranks(monitor_run, strategy)
    assert rank0["own"] == rank1["own"]  # same best, kth best, top K (paths and scores) and files
    own = rank0["own"]
    folder = monitor_run / strategy / "own"
    assert own["best_model_path"] == str(folder / "epoch=1-own_score=1.0.ckpt")  # rank 0's best, not rank 1's
    assert own["best_model_score"] == 1.0
    assert own["kth_best_model_path"] == str(folder / "epoch=2-own_score=2.0.ckpt")
    assert own["files"] == ["epoch=1-own_score=1.0.ckpt", "epoch=2-own_score=2.0.ckpt"]  # epoch 0's was evicted
    if strategy == "fsdp":
        assert (folder / "epoch=1-own_score=1.0.ckpt").is_dir()  # a sharded checkpoint: evicted with its files
    assert rank0["shared"] == rank1["shared"]
    assert rank0["shared"]["best_model_score"] == 2.0


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_unsynchronised_monitor_warns_once_on_rank_zero(monitor_run: Path, strategy: str) -> None:
    rank0, rank1 = _ranks(monitor_run, strategy)
    (message,) = rank0["warnings"]  # once, although all 3 saves saw different values; none for shared_score
    assert "monitor='own_score'" in message and "rank 0: 3.0, rank 1: 1.0" in message
    assert "sync_dist=True" in message
    assert rank1["warnings"] == []
