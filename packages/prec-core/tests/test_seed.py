"""seed_everything, the DataLoader worker seeding and deterministic mode, with real workers."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import prec
from prec.seed import SEED_ENV, WORKERS_ENV, attach_worker_init_fn


@pytest.fixture(autouse=True)
def _clean_seed_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(SEED_ENV, raising=False)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield


class Draws(Dataset[torch.Tensor]):
    """Each item draws from NumPy, Python and torch in the worker that loads it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        return torch.tensor([worker, numpy.random.rand(), random.random(), torch.rand(()).item()], dtype=torch.float64)


def _draw_all() -> torch.Tensor:
    loader = DataLoader(Draws(), batch_size=2, num_workers=2)
    assert attach_worker_init_fn(loader)
    return torch.cat(list(loader))


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    assert prec.seed_everything(123) == 123
    first = (random.random(), numpy.random.rand(), torch.rand(()).item())
    prec.seed_everything(123)
    assert (random.random(), numpy.random.rand(), torch.rand(()).item()) == first
    assert os.environ[SEED_ENV] == "123" and os.environ[WORKERS_ENV] == "0"


def test_seed_from_the_environment_and_bad_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SEED_ENV, "77")
    assert prec.seed_everything() == 77
    monkeypatch.setenv(SEED_ENV, "not a number")
    with pytest.warns(prec.PrecWarning, match="found no seed"):
        assert prec.seed_everything() == 0
    for bad in (-1, 2**32, 1.5, "7", True):
        with pytest.raises(prec.ConfigurationError, match="seed_everything"):
            prec.seed_everything(bad)  # type: ignore[arg-type]


def test_workers_draw_distinct_streams_and_a_rerun_draws_the_same() -> None:
    prec.seed_everything(7, workers=True)
    first = _draw_all()
    prec.seed_everything(7, workers=True)
    second = _draw_all()
    assert torch.equal(first, second)
    workers = first[:, 0]
    assert set(workers.tolist()) == {0.0, 1.0}
    for column in (1, 2, 3):  # numpy, python, torch: no two workers share a stream
        zero, one = first[workers == 0, column], first[workers == 1, column]
        assert not set(zero.tolist()) & set(one.tolist()), column
    prec.seed_everything(8, workers=True)
    assert not torch.equal(_draw_all(), first)


def test_worker_seeding_needs_workers_true_and_keeps_a_users_function() -> None:
    prec.seed_everything(1)
    loader = DataLoader(Draws(), num_workers=2)
    assert not attach_worker_init_fn(loader) and loader.worker_init_fn is None
    prec.seed_everything(1, workers=True)
    assert not attach_worker_init_fn(DataLoader(Draws()))  # no workers: nothing to seed

    def own(worker_id: int) -> None: ...

    custom = DataLoader(Draws(), num_workers=2, worker_init_fn=own)
    assert not attach_worker_init_fn(custom) and custom.worker_init_fn is own


def test_the_stage_resolver_gives_datamodule_loaders_the_worker_seeding() -> None:
    class Data(prec.DataModule):
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(TensorDataset(torch.randn(8, 2)), num_workers=2)

    class Model(prec.TrainingModule):
        pass

    prec.seed_everything(3, workers=True)
    train, _ = prec.resolve_dataloaders("fit", Model(), Data())
    assert train.worker_init_fn is not None and train.worker_init_fn.keywords == {"rank": 0}


def test_deterministic_mode_is_set_for_the_run_and_restored_after() -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    with prec.Deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.isnan(torch.empty(16)).all()  # uninitialised memory is filled, so it cannot leak in
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with prec.Deterministic("warn"):
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    with prec.Deterministic(None):
        assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(prec.ConfigurationError, match="deterministic='yes' must be True, False, 'warn' or None"):
        prec.Deterministic("yes")  # type: ignore[arg-type]


def test_restored_after_a_run_that_raised_and_two_seeded_fits_are_equal() -> None:
    class Net(prec.TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run() -> dict[str, torch.Tensor]:
        prec.seed_everything(5, workers=True)
        model = Net()
        loader = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4, shuffle=True, num_workers=2)
        attach_worker_init_fn(loader)
        with prec.Deterministic(True):
            prec.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False).fit(model, loader)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(RuntimeError, match="boom"), prec.Deterministic(True):
        raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()
