"""prec.Callback hooks and ModelCheckpoint (every N steps, end of epoch, best K by a monitored metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.training.checkpointing import read_checkpoint


def make_loader(n: int = 32, batch_size: int = 4) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


class Scored(prec.TrainingModule):
    """Logs ``score`` = a fixed sequence per step, so the best checkpoints are known in advance."""

    SCORES = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 0.5, 7.0]

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("score", self.SCORES[self.trainer.global_step % len(self.SCORES)])
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_trainer(tmp_path: Path, callbacks: Any, **kwargs: Any) -> prec.Trainer:
    return prec.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_callback_hooks_are_called() -> None:
    class Recording(prec.Callback):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def setup(self, trainer: Any, module: Any, stage: str) -> None:
            self.calls.append(f"setup:{stage}")

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.calls.append("batch_end")

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.calls.append(f"epoch_end:{trainer.current_epoch}")

        def on_train_epoch_completed(self, trainer: Any, module: Any) -> None:
            self.calls.append(f"epoch_completed:{trainer.current_epoch}")

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.calls.append("validation_end")

        def teardown(self, trainer: Any, module: Any, stage: str) -> None:
            self.calls.append(f"teardown:{stage}")

    class WithValidation(Scored):
        def validation_step(self, batch: Any, batch_idx: int) -> None: ...

    callback = Recording()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, enable_progress_bar=False, logger=False, callbacks=callback)
    trainer.fit(WithValidation(), make_loader(8), make_loader(4))
    assert callback.calls == [
        "setup:fit", "validation_end",  # the sanity check before training, as in Lightning
        "batch_end", "batch_end", "validation_end", "epoch_end:0", "epoch_completed:1", "teardown:fit",
    ]  # fmt: skip


def test_callbacks_must_be_callback_instances() -> None:
    with pytest.raises(prec.ConfigurationError, match="prec.Callback"):
        prec.Trainer(accelerator="cpu", callbacks=[object()])


def test_every_n_train_steps_keeps_the_best_k_by_the_monitored_metric(tmp_path: Path) -> None:
    checkpoint = prec.ModelCheckpoint(
        monitor="score", save_top_k=2, every_n_train_steps=1, filename="{step}-{score:.1f}"
    )
    make_trainer(tmp_path, checkpoint, max_steps=8).fit(Scored(), make_loader())
    # the score logged for step k is SCORES[k]; it is read once step k+1 completes
    assert names(tmp_path / "checkpoints") == ["step=4-score=1.0.ckpt", "step=7-score=0.5.ckpt"]
    assert checkpoint.best_model_path.endswith("step=7-score=0.5.ckpt") and checkpoint.best_model_score == 0.5
    saved = read_checkpoint(checkpoint.best_model_path)
    assert saved["loops"]["global_step"] == 7
    assert saved["callbacks"]["ModelCheckpoint"]["best_model_score"] == 0.5


def test_mode_max_and_save_last(tmp_path: Path) -> None:
    checkpoint = prec.ModelCheckpoint(
        tmp_path / "ck", monitor="score", mode="max", save_top_k=1, every_n_train_steps=2, save_last=True
    )
    make_trainer(tmp_path, checkpoint, max_steps=8).fit(Scored(), make_loader())
    # saves at steps 2, 4, 6, 8 with scores SCORES[1], [3], [5], [7] = 3, 1, 6, 7
    assert names(tmp_path / "ck") == ["epoch=0-step=8.ckpt", "last.ckpt"]
    assert checkpoint.best_model_score == 7.0


def test_end_of_epoch_saves_keep_the_latest_without_a_monitor(tmp_path: Path) -> None:
    checkpoint = prec.ModelCheckpoint(save_top_k=2)
    make_trainer(tmp_path, checkpoint, max_epochs=3).fit(Scored(), make_loader(16))
    assert names(tmp_path / "checkpoints") == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]


def test_a_missing_monitored_metric_is_a_configuration_error(tmp_path: Path) -> None:
    checkpoint = prec.ModelCheckpoint(monitor="val_loss")
    with pytest.raises(prec.ConfigurationError, match="val_loss"):
        make_trainer(tmp_path, checkpoint, max_epochs=1).fit(Scored(), make_loader(8))


@pytest.mark.parametrize("options", [{"mode": "best"}, {"save_top_k": -2}, {"every_n_train_steps": "2"}])
def test_bad_model_checkpoint_options(options: dict[str, Any]) -> None:
    with pytest.raises(prec.ConfigurationError):
        prec.ModelCheckpoint(**options)


def test_resume_from_an_end_of_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = Scored()
    make_trainer(tmp_path / "a", None, max_epochs=3).fit(full, make_loader(16))

    torch.manual_seed(0)
    checkpoint = prec.ModelCheckpoint(save_top_k=-1)
    make_trainer(tmp_path / "b", checkpoint, max_epochs=1).fit(Scored(), make_loader(16))
    resumed = Scored()
    trainer = make_trainer(tmp_path / "c", None, max_epochs=3)
    trainer.fit(resumed, make_loader(16), ckpt_path=checkpoint.best_model_path)
    assert trainer.global_step == 12 and trainer.current_epoch == 3
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
