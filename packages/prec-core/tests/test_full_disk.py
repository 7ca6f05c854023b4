"""A disk that fills during a run: the run stops with a :class:`prec.StorageFullError` (an ``OSError`` with the
errno), the CSV file holds only whole rows, and a folder that cannot be written fails when ``fit`` starts, before
any step. A full disk is made for real: a file-size limit (``RLIMIT_FSIZE``) in a child process, which makes the
kernel refuse writes past it with ``EFBIG`` exactly as a full disk refuses them with ``ENOSPC``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prec

resource = pytest.importorskip("resource", reason="file-size limits need the POSIX resource module")

#: A hang guard only: each child runs a few hundred CPU steps of a tiny model.
TIMEOUT_S = 600

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, warnings
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import prec

    kind, root, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    warnings.simplefilter("ignore")

    class Module(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.steps = 0

        def training_step(self, batch, batch_idx):
            self.steps += 1
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("a_fairly_long_metric_name", loss)
            self.log("another_fairly_long_metric_name", loss * 2)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if kind == "csv":
        logger = prec.CSVLogger(save_dir=root, flush_every_n_steps=1)
    else:
        logger = prec.TensorBoardLogger(save_dir=root, flush_every_n_steps=1)
    trainer = prec.Trainer(
        accelerator="cpu", max_steps=400, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, log_every_n_steps=1,
    )
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    module = Module()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        trainer.fit(module, loader)
    except BaseException as error:
        print(json.dumps({"type": type(error).__name__, "qualname": type(error).__module__ + "." + type(error).__name__,
                          "errno": getattr(error, "errno", None), "message": str(error), "steps": module.steps}))
    else:
        print(json.dumps({"type": None, "steps": module.steps}))
    """
)


def _run_child(kind: str, root: Path, limit: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(root), str(limit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the child printed no result (rc {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def test_a_full_disk_stops_the_csv_logger_with_a_clear_error_and_whole_rows(tmp_path: Path) -> None:
    result = _run_child("csv", tmp_path, 6000)
    assert result["type"] == "StorageFullError", result
    assert result["errno"] is not None
    assert "CSVLogger cannot write" in str(result["message"]) and "rows were not written" in str(result["message"])
    assert 0 < int(result["steps"]) < 400  # type: ignore[call-overload]
    (metrics,) = tmp_path.rglob("metrics.csv")
    raw = metrics.read_bytes()
    assert raw.endswith(b"\n"), "the last row is torn"
    rows = list(csv.reader(raw.decode().splitlines()))
    header, body = rows[0], rows[1:]
    assert body and all(len(row) == len(header) for row in body)
    assert [int(row[0]) for row in body] == sorted(int(row[0]) for row in body)


def test_a_full_disk_stops_the_tensorboard_logger_with_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard", reason="TensorBoardLogger needs the tensorboard package")
    result = _run_child("tensorboard", tmp_path, 6000)
    assert result["type"] == "StorageFullError", result
    assert "TensorBoardLogger cannot write" in str(result["message"])
    assert 0 < int(result["steps"]) < 400  # type: ignore[call-overload]


def test_storage_full_error_is_an_os_error_exported_by_prec() -> None:
    assert issubclass(prec.StorageFullError, OSError)
    assert "StorageFullError" in prec.__all__


class _Counting(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.steps = 0

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        return self.layer(torch.ones(1, 2)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_an_unwritable_checkpoint_folder_fails_when_fit_starts_not_at_the_first_save(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a folder below a file cannot be made, even by root
    checkpoint = prec.ModelCheckpoint(dirpath=blocker / "checkpoints", every_n_train_steps=20)
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=40,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    module = _Counting()
    with pytest.raises(prec.ConfigurationError, match=r"ModelCheckpoint cannot write to .*checkpoints"):
        trainer.fit(module, [torch.zeros(1)] * 4)
    assert module.steps == 0


def test_an_unwritable_log_folder_fails_when_fit_starts(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=prec.CSVLogger(save_dir=blocker),
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    module = _Counting()
    with pytest.raises(prec.ConfigurationError, match="CSVLogger cannot write"):
        trainer.fit(module, [torch.zeros(1)] * 4)
    assert module.steps == 0
