"""Checkpoints: exact resume under 32-true, bf16-mixed and a real grad scaler; precision changes; bad files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.training.checkpointing import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def scaler_precision() -> prec.MixedPrecision:
    """16-mixed on CPU with torch's GradScaler; a short growth interval so resume must carry the tracker."""
    return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**8, growth_interval=3)


def shuffled_loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)  # 8 batches, order from the global RNG


class Net(prec.TrainingModule):
    """Dropout and a shuffled loader draw from the RNG; Adam and a step scheduler carry state."""

    def __init__(self, inf_at_steps: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2))
        self.head = torch.nn.Linear(16, 1)
        self.inf_at_steps = inf_at_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x).float(), y)
        self.log("loss", loss)
        return loss

    def on_after_backward(self) -> None:
        if self.trainer.global_step in self.inf_at_steps:
            self.head.weight.grad[0, 0] = math.inf

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def make_trainer(precision: str, **kwargs: Any) -> prec.Trainer:
    options: dict[str, Any] = {"plugins": [scaler_precision()]} if precision == "scaler" else {"precision": precision}
    return prec.Trainer(accelerator="cpu", enable_progress_bar=False, logger=False, **options, **kwargs)


def state(trainer: prec.Trainer, model: Net) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "precision": trainer.precision_plugin.state_dict(),
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "step": trainer.global_step,
        "epoch": trainer.current_epoch,
    }


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "scaler"])
@pytest.mark.parametrize("first_steps", [5, 8])  # mid-epoch, and exactly at an epoch boundary
def test_resume_is_bit_identical(precision: str, first_steps: int, tmp_path: Path) -> None:
    inf_at = frozenset({2, 9}) if precision == "scaler" else frozenset()  # one skip before the save, one after
    torch.manual_seed(0)
    model = Net(inf_at)
    uninterrupted = make_trainer(precision, max_steps=2 * first_steps)
    uninterrupted.fit(model, shuffled_loader())
    expected = state(uninterrupted, model)

    torch.manual_seed(0)
    first = Net(inf_at)
    part = make_trainer(precision, max_steps=first_steps)
    part.fit(first, shuffled_loader())
    part.save_checkpoint(tmp_path / "mid.ckpt")

    torch.manual_seed(1234)  # a fresh process: other weights, other RNG state
    resumed_model = Net(inf_at)
    resumed = make_trainer(precision, max_steps=2 * first_steps)
    resumed.fit(resumed_model, shuffled_loader(), ckpt_path=tmp_path / "mid.ckpt")
    actual = state(resumed, resumed_model)

    for name, value in expected["params"].items():
        assert torch.equal(value, actual["params"][name]), name
    assert actual["precision"] == expected["precision"]
    assert (actual["lr"], actual["step"], actual["epoch"]) == (expected["lr"], expected["step"], expected["epoch"])
    if precision == "scaler":
        assert resumed.precision_plugin.skipped_steps == 2 and "scaler" in actual["precision"]


def test_checkpoint_records_precision_metadata_and_loop_state(tmp_path: Path) -> None:
    trainer = make_trainer("bf16-true", max_steps=3)
    trainer.fit(Net(), shuffled_loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = read_checkpoint(tmp_path / "a.ckpt")
    assert checkpoint["precision"]["name"] == "bf16-true"
    assert checkpoint["precision"]["param_dtype"] == "torch.bfloat16"
    assert checkpoint["precision"]["parameter_dtypes"]["head.weight"] == "torch.bfloat16"
    assert checkpoint["loops"]["global_step"] == 3 and checkpoint["loops"]["batches_seen"] == 3
    assert len(checkpoint["optimizer_states"]) == 1 and len(checkpoint["lr_schedulers"]) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "a.ckpt"]  # no temporary file left behind


# -- changing precision ------------------------------------------------------------------------------------------
def test_parameters_are_cast_to_the_new_precision_with_a_warning(tmp_path: Path) -> None:
    source = make_trainer("bf16-true", max_steps=2)
    source.fit(Net(), shuffled_loader())
    source.save_checkpoint(tmp_path / "bf16.ckpt")
    model = Net()
    target = make_trainer("32-true", max_steps=3)
    with pytest.warns(prec.PrecWarning, match=r"'bf16-true'.*from torch.bfloat16 to torch.float32 for '32-true'"):
        target.fit(model, shuffled_loader(), ckpt_path=tmp_path / "bf16.ckpt")
    assert model.head.weight.dtype == torch.float32 and target.global_step == 3


def test_scaler_state_is_dropped_with_a_warning_when_the_new_precision_has_none(tmp_path: Path) -> None:
    source = make_trainer("scaler", max_steps=2)
    source.fit(Net(), shuffled_loader())
    source.save_checkpoint(tmp_path / "scaled.ckpt")
    with pytest.warns(prec.PrecWarning, match=r"grad scaler state from '16-mixed'.*'bf16-mixed' has no grad scaler"):
        make_trainer("bf16-mixed", max_steps=3).fit(Net(), shuffled_loader(), ckpt_path=tmp_path / "scaled.ckpt")


def test_a_fresh_scaler_starts_with_a_warning_when_the_old_precision_had_none(tmp_path: Path) -> None:
    source = make_trainer("32-true", max_steps=2)
    source.fit(Net(), shuffled_loader())
    source.save_checkpoint(tmp_path / "plain.ckpt")
    target = make_trainer("scaler", max_steps=3)
    with pytest.warns(prec.PrecWarning, match=r"from '32-true' has no grad scaler state: '16-mixed' starts a fresh"):
        target.fit(Net(), shuffled_loader(), ckpt_path=tmp_path / "plain.ckpt")
    assert target.precision_plugin.scaler.get_scale() == 2.0**8  # the fresh scaler stepped once: no growth yet


def test_same_precision_loads_silently(tmp_path: Path) -> None:
    source = make_trainer("scaler", max_steps=2)
    source.fit(Net(), shuffled_loader())
    source.save_checkpoint(tmp_path / "a.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)
        make_trainer("scaler", max_steps=3).fit(Net(), shuffled_loader(), ckpt_path=tmp_path / "a.ckpt")


# -- mismatches and bad files ------------------------------------------------------------------------------------
def test_an_incompatible_model_names_the_mismatched_keys(tmp_path: Path) -> None:
    source = make_trainer("32-true", max_steps=1)
    source.fit(Net(), shuffled_loader())
    source.save_checkpoint(tmp_path / "a.ckpt")

    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(16, 2)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(prec.CheckpointError) as error:
        make_trainer("32-true", max_steps=2).fit(Wider(), shuffled_loader(), ckpt_path=tmp_path / "a.ckpt")
    message = str(error.value)
    assert "missing keys: extra.weight, extra.bias" in message
    assert "head.weight (checkpoint (1, 16), model (2, 16))" in message


def test_validate_loads_weights_from_a_checkpoint(tmp_path: Path) -> None:
    trained = Net()
    source = make_trainer("32-true", max_steps=4)
    source.fit(trained, shuffled_loader())
    source.save_checkpoint(tmp_path / "a.ckpt")
    fresh = Net()
    fresh.predict_step = lambda batch, idx: fresh(batch[0])  # type: ignore[method-assign]
    make_trainer("32-true").predict(fresh, shuffled_loader(), ckpt_path=tmp_path / "a.ckpt")
    for a, b in zip(trained.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def _valid_checkpoint(tmp_path: Path) -> Path:
    trainer = make_trainer("32-true", max_steps=1)
    trainer.fit(Net(), shuffled_loader())
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    return tmp_path / "good.ckpt"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_or_truncated_file_is_a_checkpoint_error(damage: str, tmp_path: Path) -> None:
    path = _valid_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x80not a checkpoint" * 50, "empty": b""}[damage]
    )
    with pytest.raises(prec.CheckpointError, match="corrupt, truncated or not a torch checkpoint"):
        make_trainer("32-true", max_steps=2).fit(Net(), shuffled_loader(), ckpt_path=path)


def test_a_missing_file_or_foreign_content_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(prec.CheckpointError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "nope.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(prec.CheckpointError, match="not a prec checkpoint"):
        read_checkpoint(tmp_path / "list.ckpt")


def test_save_checkpoint_needs_a_model() -> None:
    with pytest.raises(prec.ConfigurationError, match="needs a model"):
        make_trainer("32-true").save_checkpoint("x.ckpt")


def test_a_different_number_of_optimizers_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _valid_checkpoint(tmp_path)

    class TwoOptimizers(Net):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.body.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]

    with pytest.raises(prec.CheckpointError, match="holds 1 optimizer states, but configure_optimizers"):
        make_trainer("32-true", max_steps=2).fit(TwoOptimizers(), shuffled_loader(), ckpt_path=path)
