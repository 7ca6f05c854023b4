"""Metrics as Lightning computes them (names, batch-size weighting) and reduced across 2 gloo processes."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import sibling

from prec.errors import ConfigurationError
from prec.training.metrics import MetricStore, infer_batch_size

HANG_GUARD_S = 240

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec

    out = Path(sys.argv[1])


    class Model(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            rank = self.trainer.global_rank
            self.log("weighted", float(rank + 1), batch_size=rank + 1)  # rank 0: 1 (weight 1), rank 1: 2 (weight 2)
            self.log("largest", float(rank + 1), reduce_fx="max")
            self.log("total", 1.0, reduce_fx="sum")
            self.log("own", float(rank), sync_dist=False)
            self.log("stepwise", float(rank), on_step=True, on_epoch=False, sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    if __name__ == "__main__":
        data = DataLoader(TensorDataset(torch.ones(8, 2)), batch_size=2)
        trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=1, enable_progress_bar=False,
                               logger=False)
        model = Model()
        trainer.fit(model, data)
        names = sorted(trainer.callback_metrics)
        (results,) = trainer.validate(model, data)
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"fit_names": names, "validate": results}))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_validate_returns_values_reduced_across_ranks(tmp_path: Path) -> None:
    safety = sibling("test_distributed_safety.py")  # its launch helpers: clean environment, hang guard
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ((code, stderr),), _ = safety.run([([sys.executable, str(script), str(tmp_path)], safety.clean_env())], tmp_path)
    assert code == 0, stderr
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, info in enumerate(ranks):
        assert {"loss", "loss_step", "loss_epoch"} <= set(info["fit_names"])
        results = info["validate"]
        assert results["weighted"] == pytest.approx(5 / 3)  # (1*1 + 2*2) / (1 + 2), over each rank's 2 batches
        assert results["largest"] == 2.0
        assert results["total"] == 4.0  # 2 batches on each of 2 ranks
        assert results["own"] == float(rank)  # sync_dist=False: this rank's own
        assert "stepwise" not in results  # a step value: not an epoch result


# -- one process: Lightning's names and weights --------------------------------------------------------------
def test_step_and_epoch_names_and_weighted_mean() -> None:
    store = MetricStore()
    store.current_batch = (torch.zeros(4, 3), torch.zeros(4))
    store.log("loss", torch.tensor(1.0), False, True, True, True)
    store.current_batch = (torch.zeros(2, 3), torch.zeros(2))
    store.log("loss", torch.tensor(4.0), True, True, True, True)
    assert set(store.take_pending()) == {"loss_step"}
    assert store.callback_metrics()["loss"] == 4.0  # the latest step value during the epoch
    results = store.end_epoch()
    assert set(results) == {"loss_epoch"}
    assert results["loss_epoch"].item() == pytest.approx((1 * 4 + 4 * 2) / 6)
    metrics = store.callback_metrics()
    assert metrics["loss"] == metrics["loss_epoch"] and metrics["loss_step"] == 4.0
    assert set(store.progress_bar_metrics()) == {"loss_step", "loss_epoch"}


def test_batch_size_given_and_reductions() -> None:
    store = MetricStore()
    store.training = False
    for value, size in ((1.0, 1), (3.0, 3)):
        store.log("acc", value, False, None, None, True, batch_size=size)
        store.log("top", value, False, None, None, True, reduce_fx=torch.max)
        store.log("count", 1, False, None, None, True, reduce_fx="sum")
    results = store.end_epoch()
    assert results["acc"].item() == pytest.approx(10 / 4)
    assert results["top"].item() == 3.0 and results["count"].item() == 2.0


@pytest.mark.parametrize(
    ("batch", "size"),
    [(torch.zeros(5, 2), 5), ((torch.zeros(3), torch.zeros(7)), 3), ({"x": [torch.zeros(6)]}, 6), ("text", 1),
     (torch.tensor(2.0), 1)],
)  # fmt: skip
def test_batch_size_is_inferred_from_the_first_tensor(batch: Any, size: int) -> None:
    assert infer_batch_size(batch) == size


def test_an_unknown_reduction_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"reduce_fx='median'\): reduce_fx must be one of mean, sum"):
        MetricStore().log("x", 1.0, False, None, None, True, reduce_fx="median")
