"""Loggers lose nothing: killed writers keep every flushed row, bad folders fail at the run's start, several
loggers work at once, and TensorBoard files hold the scalars (read back with tensorboard's own reader)."""

from __future__ import annotations

import csv
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.loggers import CSVLogger, LoggerGroup, resolve_loggers

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prec.loggers import CSVLogger
    logger = CSVLogger(sys.argv[1], name="run", version=0, flush_every_n_steps=1)
    logger.setup(Path(sys.argv[1]), True)
    for step in range(100000):
        values = {"loss": float(step), "pad": "x" * 200}
        if step % 3 == 0:
            values[f"metric_{step}"] = 1.0  # a new column: the whole file is rewritten
        logger.log_row(values, step, 0)
        logger.flush()
        print(step, flush=True)
    """
)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.slow
def test_no_kill_at_any_moment_loses_a_flushed_row(tmp_path: Path) -> None:
    rng = random.Random(0)
    shm = Path("/dev/shm")  # a kill keeps what the page cache holds; tmpfs only makes the fsyncs cheap
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    try:
        kill_writers(root, rng)
    finally:
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)


def kill_writers(root: Path, rng: random.Random) -> None:
    for attempt in range(5):
        folder = root / str(attempt)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        flushed = -1
        try:
            target = rng.randrange(60, 200)  # rewrites of a few hundred rows: kills land inside them
            while flushed < target:
                line = writer.stdout.readline()
                assert line, f"the writer ended early with {writer.wait(timeout=60)}"
                flushed = int(line)
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=60)
        finally:
            if writer.poll() is None:
                writer.kill()
        rows = read_rows(folder / "run" / "version_0" / "metrics.csv")
        steps = [int(row["step"]) for row in rows if row["step"].isdigit() and row.get("loss")]
        assert steps[: flushed + 1] == list(range(flushed + 1)), f"attempt {attempt}: flushed rows lost"
        assert all(float(rows[s]["loss"]) == s for s in range(flushed + 1))
        assert rows[0]["metric_0"] == "1.0"


def test_a_read_only_log_folder_fails_at_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        trainer = prec.Trainer(accelerator="cpu", max_steps=99, enable_progress_bar=False, default_root_dir=folder)
        with pytest.raises(prec.ConfigurationError, match=f"CSVLogger cannot write to {folder}.*Read-only"):
            trainer.fit(Net(), loader())
        assert trainer.global_step == 0  # found before the first step, not after 99
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_log_folder_fails_at_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with (folder / "filler").open("wb") as handle:
            with pytest.raises(OSError):
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        logger = CSVLogger(folder)
        with pytest.raises(prec.ConfigurationError, match=f"cannot write to {folder}.*No space left"):
            logger.setup(folder, True)
        CSVLogger(folder).setup(folder, False)  # other ranks write nothing, so check nothing
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_an_existing_metrics_file_keeps_its_rows(tmp_path: Path) -> None:
    for run in range(2):
        logger = CSVLogger(tmp_path, version="fixed")
        logger.setup(tmp_path, True)
        logger.log_row({f"only_in_run_{run}": 1.0}, run, 0)
        logger.flush()
    rows = read_rows(tmp_path / "prec_logs" / "fixed" / "metrics.csv")
    assert [row["step"] for row in rows] == ["0", "1"] and rows[0]["only_in_run_0"] == "1.0"


class Collect:
    """A logger of the user's own: only ``log_metrics`` is required."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))


def test_resolve_loggers_accepts_what_the_trainer_documents(tmp_path: Path) -> None:
    assert resolve_loggers(False) is None and resolve_loggers(None) is None and resolve_loggers([]) is None
    default = resolve_loggers(True)
    assert isinstance(default, LoggerGroup) and isinstance(default.loggers[0], CSVLogger)
    csv_logger, own = CSVLogger(flush_every_n_steps=7), Collect()
    group = resolve_loggers([csv_logger, own])
    assert group is not None and group.loggers == [csv_logger, own] and group.flush_every_n_steps == 7
    for bad in ("csv", 5, {"a": 1}, [csv_logger, "tb"], object()):
        with pytest.raises(prec.ConfigurationError, match=r"logger=.* is not a logger\. Accepted: True"):
            resolve_loggers(bad)
    with pytest.raises(prec.ConfigurationError, match="same logger twice"):
        resolve_loggers([own, own])


def loader() -> DataLoader[Any]:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


class Net(prec.TrainingModule):
    def __init__(self, inf_at: int = -1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.inf_at = inf_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]).float(), batch[1])
        self.log("loss", loss)
        return loss

    def on_after_backward(self) -> None:
        if self.trainer.global_step == self.inf_at:
            self.layer.weight.grad[0, 0] = math.inf

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_and_csv_at_once_with_the_scaler_numbers(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    tensorboard, csv_logger, own = prec.loggers.TensorBoardLogger(flush_every_n_steps=3), CSVLogger(), Collect()
    precision = prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**8)
    trainer = prec.Trainer(
        accelerator="cpu",
        max_epochs=1,
        plugins=[precision],
        enable_progress_bar=False,
        logger=[tensorboard, csv_logger, own],
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(Net(inf_at=3), loader())
    folder = tmp_path / "prec_logs" / "version_0"
    assert tensorboard.log_dir == csv_logger.log_dir == folder  # one run, one folder
    written = scalars(folder)
    assert [step for step, _ in written["loss"]] == list(range(8))
    assert written["loss_scale"][-1] == (7, 2.0**7) and written["skipped_steps"][-1] == (7, 1.0)
    rows = read_rows(csv_logger.metrics_file)
    assert sorted({int(row["step"]) for row in rows}) == list(range(8)) and float(rows[-1]["skipped_steps"]) == 1.0
    assert sorted({step for step, _ in own.rows}) == list(range(8)) and own.rows[-1][1]["loss_scale"] == 2.0**7
    assert torch.isclose(torch.tensor(written["loss"][5][1]), torch.tensor(float(rows[5]["loss"])))


def test_tensorboard_hyperparameters(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    logger = prec.loggers.TensorBoardLogger(
        tmp_path, hparams={"lr": 0.01, "model": {"width": 8}, "opt": torch.optim.SGD}
    )
    logger.setup(tmp_path, True)
    logger.finalize("success")
    accumulator = EventAccumulator(str(logger.log_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["lr"].number_value == 0.01 and start.hparams["model/width"].number_value == 8
    assert "SGD" in start.hparams["opt"].string_value
