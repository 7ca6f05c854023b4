"""load_from_checkpoint at a 16-bit dtype keeps the modules a bf16-true run kept in float32 (keep_float32, a
measured plan): read from the checkpoint's dtypes by default, replaced by an explicit ``keep_float32=``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.numerics import Decision, Plan


class Net(prec.TrainingModule):
    def __init__(self, width: int = 16, offset: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a = torch.nn.Linear(8, width)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
        self.built_on = self.a.weight.device.type
        if offset:  # a tensor the checkpoint does not hold: the model is built a second time, for real
            self.register_buffer("shift", torch.ones(width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.a(x))
        return self.head(hidden + self.shift if self.hparams.offset else hidden)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _fit(tmp_path: Path, options: dict[str, Any], offset: bool = False) -> tuple[Net, Path]:
    trainer = prec.Trainer(
        accelerator="cpu", precision="bf16-true", precision_options=options, max_steps=3, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Net(offset=offset)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(48, 8), torch.randn(48, 1)), batch_size=16))
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return model, path


def _dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: param.dtype for name, param in model.named_parameters()}


def _expected(kept: tuple[str, ...]) -> dict[str, torch.dtype]:
    names = [name for name, _ in Net().named_parameters()]
    return {name: torch.float32 if name.startswith(kept) else torch.bfloat16 for name in names}


@pytest.mark.parametrize("offset", [False, True], ids=["meta", "rebuilt"])
def test_layer_norm_kept_in_training_stays_float32_and_outputs_match(
    tmp_path: Path, offset: bool, caplog: pytest.LogCaptureFixture
) -> None:
    trained, path = _fit(tmp_path, {"keep_float32": [torch.nn.LayerNorm]}, offset=offset)
    assert _dtypes(trained) == _expected(("norm.",))
    with caplog.at_level(logging.INFO, logger="prec"):
        loaded = Net.load_from_checkpoint(path, precision="bf16-true")
    assert _dtypes(loaded) == _expected(("norm.",))
    if not offset:
        assert loaded.built_on == "meta", "the model was built in real memory first"
    x = torch.randn(5, 8).bfloat16()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    notes = [record.getMessage() for record in caplog.records if "keep_float32" in record.getMessage()]
    assert len(notes) == 1 and "'norm'" in notes[0] and "keep_float32=()" in notes[0], notes


def test_a_plans_kept_modules_come_back_float32(tmp_path: Path) -> None:
    plan = Plan(precision="bf16-true", keep_float32=(Decision("head", "overflows in bfloat16"),))
    trained, path = _fit(tmp_path, {"plan": plan})
    loaded = Net.load_from_checkpoint(path, dtype=torch.bfloat16)
    assert _dtypes(loaded) == _dtypes(trained) == _expected(("head.",))
    x = torch.randn(5, 8).bfloat16()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_empty_keep_float32_casts_everything(tmp_path: Path) -> None:
    _, path = _fit(tmp_path, {"keep_float32": [torch.nn.LayerNorm]})
    loaded = Net.load_from_checkpoint(path, precision="bf16-true", keep_float32=())
    assert set(_dtypes(loaded).values()) == {torch.bfloat16}
    assert loaded(torch.randn(2, 8).bfloat16()).dtype == torch.bfloat16


def test_explicit_keep_float32_replaces_what_the_checkpoint_says(tmp_path: Path) -> None:
    _, path = _fit(tmp_path, {"keep_float32": [torch.nn.LayerNorm]})
    loaded = Net.load_from_checkpoint(path, precision="bf16-true", keep_float32=["head"])
    assert _dtypes(loaded) == _expected(("head.",))
    assert loaded(torch.randn(2, 8).bfloat16()).dtype == torch.bfloat16


def test_explicit_keep_float32_on_a_run_that_kept_nothing(tmp_path: Path) -> None:
    _, path = _fit(tmp_path, {})
    assert set(_dtypes(Net.load_from_checkpoint(path, precision="bf16-true")).values()) == {torch.bfloat16}
    loaded = Net.load_from_checkpoint(path, dtype="bfloat16", keep_float32=torch.nn.LayerNorm)
    assert _dtypes(loaded) == _expected(("norm.",))


def test_a_float32_load_keeps_everything_float32(tmp_path: Path) -> None:
    _, path = _fit(tmp_path, {"keep_float32": [torch.nn.LayerNorm]})
    loaded = Net.load_from_checkpoint(path, precision="32-true")
    assert set(_dtypes(loaded).values()) == {torch.float32}


@pytest.mark.parametrize("bad", [5, [torch.nn.LayerNorm, 3], [torch.optim.Adam], [int]])
def test_bad_keep_float32_is_a_configuration_error_naming_it(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(prec.ConfigurationError, match="keep_float32"):
        Net.load_from_checkpoint(tmp_path / "never-read.ckpt", precision="bf16-true", keep_float32=bad)
