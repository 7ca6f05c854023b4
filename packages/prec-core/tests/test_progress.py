"""Progress bars on real streams: the loops' training bar, the replaceable callback and the results table."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.callbacks.progress import results_table


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader[Any]:
    x = torch.randn(16, 4)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


def test_the_callback_draws_training_and_validation_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    bar = prec.TQDMProgressBar()
    trainer = prec.Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=[bar])
    trainer.fit(Net(), _loader(), _loader())
    captured = capsys.readouterr()
    assert "Epoch 0" in captured.err and "Epoch 1" in captured.err and "4/4" in captured.err  # 4 batches of 4
    assert "train_loss=" in captured.err
    assert "Validation" in captured.err
    assert captured.out == ""  # no results table inside fit


def test_validate_prints_a_results_table(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = prec.Trainer(accelerator="cpu", logger=False, callbacks=[prec.TQDMProgressBar()])
    (results,) = trainer.validate(Net(), _loader())
    out = capsys.readouterr().out
    assert "Validate metric" in out and "DataLoader 0" in out and "val_loss" in out
    assert f"{results['val_loss']:.6g}" in out


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with os.fdopen(slave, "w", buffering=1) as terminal:
        assert terminal.isatty()  # a real terminal; the run writes far less than its buffer holds
        bar = prec.TQDMProgressBar(file=terminal)
        trainer = prec.Trainer(accelerator="cpu", max_epochs=1, logger=False, callbacks=[bar])
        trainer.fit(Net(), _loader())
        terminal.flush()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(master)
    screen = b"".join(chunks).decode()
    assert "Epoch 0" in screen and "\r" in screen  # tqdm rewrites the line with carriage returns


def test_refresh_rate_zero_draws_nothing_and_bad_rates_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = prec.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, callbacks=[prec.TQDMProgressBar(refresh_rate=0)],
    )  # fmt: skip
    trainer.fit(Net(), _loader())
    assert "Epoch" not in capsys.readouterr().err
    with pytest.raises(prec.ConfigurationError, match="refresh_rate=-1"):
        prec.TQDMProgressBar(refresh_rate=-1)


def test_results_table_layout() -> None:
    table = results_table("test", {"test_loss": 0.123456789, "acc": 0.5})
    lines = table.splitlines()
    assert lines[0] == lines[2] == lines[-1] and set(lines[0]) == {"─"}
    assert "Test metric" in lines[1] and "DataLoader 0" in lines[1]
    assert "acc" in lines[3] and "0.5" in lines[3]  # sorted by name
    assert "test_loss" in lines[4] and "0.123457" in lines[4]
    stream = io.StringIO()
    print(table, file=stream)
    assert stream.getvalue().count("\n") == 6
