"""Nothing is dropped or poisoned silently on resume: master-weight state, non-finite weights and optimizer state,
and an ``eps`` that is 0 in the weights' dtype."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.checkpoint.io import atomic_save, read_checkpoint


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Regressor(prec.TrainingModule):
    def __init__(self, optimizer: str = "adam", eps: float = 1e-8) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.optimizer, self.eps = optimizer, eps

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).float(), y.float())

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-3, eps=self.eps)
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(precision: str = "32-true", max_epochs: int = 1, **options) -> prec.Trainer:
    return prec.Trainer(
        accelerator="cpu",
        precision=precision,
        precision_options=options or None,
        max_epochs=max_epochs,
        enable_progress_bar=False,
        logger=False,
    )


def saved(tmp_path: Path, precision: str = "32-true", **options) -> Path:
    run = trainer(precision, **options)
    run.fit(Regressor(), loader())
    path = tmp_path / "run.ckpt"
    run.save_checkpoint(path)
    return path


def poison(path: Path, edit) -> Path:  # noqa: ANN001
    """Rewrite a checkpoint with ``edit`` applied (a fresh checksum: the contents are what is tested here)."""
    checkpoint = read_checkpoint(path)
    edit(checkpoint)
    poisoned = path.with_name("poisoned.ckpt")
    atomic_save(checkpoint, poisoned)
    return poisoned


# -- 2. master weights across a resume ------------------------------------------------------------------------------
def test_resuming_master_weights_without_them_says_the_float32_copies_are_dropped(tmp_path) -> None:
    path = saved(tmp_path, "bf16-true", master_weights="fp32")
    with pytest.warns(prec.PrecWarning, match=r"master_weights='fp32'.*float32 master weights .* are dropped"):
        trainer("bf16-true", max_epochs=2).fit(Regressor(), loader(), ckpt_path=path)


def test_resuming_plain_weights_with_master_weights_says_the_copies_start_from_16_bit(tmp_path) -> None:
    path = saved(tmp_path, "bf16-true")
    with pytest.warns(prec.PrecWarning, match=r"master_weights=None.*starts from the model's 16-bit weights"):
        trainer("bf16-true", max_epochs=2, master_weights="fp32").fit(Regressor(), loader(), ckpt_path=path)


# -- 3. non-finite checkpoint contents ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value) -> None:
    path = poison(saved(tmp_path), lambda c: c["state_dict"]["layer.weight"].fill_(value))
    with pytest.raises(prec.CheckpointError, match=r"poisoned\.ckpt: the weights layer\.weight hold inf/NaN"):
        trainer(max_epochs=2).fit(Regressor(), loader(), ckpt_path=path)


def test_a_non_finite_buffer_loads(tmp_path) -> None:
    class Masked(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mask", torch.full((2, 2), float("-inf")).triu(1))

    run = trainer()
    run.fit(Masked(), loader())
    run.save_checkpoint(tmp_path / "masked.ckpt")
    trainer(max_epochs=2).fit(Masked(), loader(), ckpt_path=tmp_path / "masked.ckpt")


def test_nan_in_adams_second_moment_is_refused_naming_the_parameter(tmp_path) -> None:
    def edit(checkpoint) -> None:  # noqa: ANN001
        checkpoint["optimizer_states"][0]["state"][0]["exp_avg_sq"][0, 1] = float("nan")

    path = poison(saved(tmp_path), edit)
    model = Regressor()
    with pytest.raises(prec.CheckpointError, match=r"optimizer 0 \(Adam\) state 'exp_avg_sq' of layer\.weight"):
        trainer(max_epochs=2).fit(model, loader(), ckpt_path=path)


def test_non_finite_master_weights_are_refused(tmp_path) -> None:
    def edit(checkpoint) -> None:  # noqa: ANN001
        checkpoint["precision_state"]["masters"][0][0].fill_(float("nan"))

    path = poison(saved(tmp_path, "bf16-true", master_weights="fp32"), edit)
    with pytest.raises(prec.CheckpointError, match=r"masters\[0\] hold inf/NaN"):
        trainer("bf16-true", max_epochs=2, master_weights="fp32").fit(Regressor(), loader(), ckpt_path=path)


def test_the_guard_tells_poisoned_weights_from_poisoned_gradients() -> None:
    model = torch.nn.Linear(4, 1)
    precision = prec.get_precision("32-true", "cpu")
    precision.setup_module(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")  # as a bad update or a loaded state leaves it
    model(torch.randn(2, 4)).pow(2).sum().backward()
    with pytest.warns(prec.PrecWarning, match=r"a poisoned state, not the gradients of this batch: the weights weight"):
        precision.optimizer_step(optimizer)


# -- 3. the same poison without a checkpoint: eps that is 0 in float16 ---------------------------------------------
def test_16_true_refuses_an_adam_eps_that_is_zero_in_float16() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"Adam\(eps=1e-08\).*0 in torch\.float16.*eps >= 1e-7"):
        trainer("16-true").fit(Regressor(), loader())


def test_16_true_trains_with_an_eps_float16_can_hold() -> None:
    model = Regressor(eps=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)  # no skip
        trainer("16-true").fit(model, loader())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_16_true_with_master_weights_keeps_adams_default_eps() -> None:
    model = Regressor()
    trainer("16-true", master_weights="fp32").fit(model, loader())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
