"""Lightning's debugging and data Trainer arguments (``benchmark``, ``overfit_batches``,
``reload_dataloaders_every_n_epochs``), when ``val_dataloader()`` is asked for, and several test/predict loaders:
the same script under ``lightning.Trainer`` and ``prec.Trainer`` observes the same thing."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

lightning = pytest.importorskip("lightning.pytorch")

QUIET = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}


def _trainer(framework: str, **kwargs: Any) -> Any:
    arguments = {"accelerator": "cpu", **QUIET, **kwargs}
    return lightning.Trainer(**arguments) if framework == "lightning" else prec.Trainer(**arguments)


def _base(framework: str) -> type:
    return lightning.LightningModule if framework == "lightning" else prec.TrainingModule


def _callback_base(framework: str) -> type:
    return lightning.Callback if framework == "lightning" else prec.Callback


def _quietly(run: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run()


def _indexed(n: int, batch_size: int, shuffle: bool = False) -> DataLoader[Any]:
    """Batches of ``(x, index)``, so a test sees which samples each step got."""
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    return DataLoader(TensorDataset(x, torch.arange(n)), batch_size=batch_size, shuffle=shuffle)


def _recording_module(framework: str) -> Any:
    """Records the sample indices of every training and validation batch, per epoch."""

    class Recorder(_base(framework)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.seen: list[tuple[str, int, list[int]]] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append(("train", self.current_epoch, batch[1].tolist()))
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.seen.append(("val", self.current_epoch, batch[1].tolist()))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Recorder()


@pytest.fixture(autouse=True)
def _torch_flags_kept() -> Any:
    """Lightning sets torch's deterministic and cuDNN flags for the session and leaves them: put them back."""
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]


# -- benchmark --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("benchmark", "deterministic"), [(True, None), (False, None), (None, None), (None, True), (True, True)]
)
def test_benchmark_sets_cudnn_for_the_run_as_lightning_and_restores_it(
    benchmark: bool | None, deterministic: bool | None
) -> None:
    def seen_in_fit(framework: str, before: bool) -> bool:
        torch.backends.cudnn.benchmark = before
        observed: list[bool] = []

        class Watch(_callback_base(framework)):  # type: ignore[misc]
            def on_train_start(self, trainer: Any, module: Any) -> None:
                observed.append(torch.backends.cudnn.benchmark)

        trainer = _trainer(
            framework, max_steps=1, benchmark=benchmark, deterministic=deterministic, callbacks=[Watch()]
        )
        _quietly(lambda: trainer.fit(_recording_module(framework), _indexed(8, 4)))
        return observed[0]

    for before in (False, True):
        assert seen_in_fit("prec", before) == seen_in_fit("lightning", before)
        seen_in_fit("prec", before)
        assert torch.backends.cudnn.benchmark is before  # prec gives the session its own value back


def test_benchmark_with_deterministic_warns_as_lightning() -> None:
    trainer = prec.Trainer(accelerator="cpu", max_steps=1, benchmark=True, deterministic=True, **QUIET)
    with pytest.warns(prec.PrecWarning, match="benchmark=True with deterministic=True"):
        trainer.fit(_recording_module("prec"), _indexed(8, 4))


# -- overfit_batches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overfit_batches", [2, 0.5])
def test_overfit_batches_trains_and_validates_on_the_same_first_batches_as_lightning(overfit_batches: float) -> None:
    def run(framework: str) -> list[tuple[str, int, list[int]]]:
        model = _recording_module(framework)
        trainer = _trainer(framework, max_epochs=2, overfit_batches=overfit_batches, num_sanity_val_steps=0)
        prec.seed_everything(0)
        trainer.fit(model, _indexed(16, 4, shuffle=True), _indexed(12, 3, shuffle=True))
        return model.seen

    with pytest.warns(UserWarning, match="shuffl"):
        expected = run("lightning")
    with pytest.warns(prec.PrecWarning, match="overfit_batches is set but the training loader shuffles"):
        seen = run("prec")
    assert seen == expected
    train = [indices for kind, _, indices in seen if kind == "train"]
    assert train == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2  # the first batches, in order, every epoch


def test_overfit_batches_takes_the_place_of_the_train_and_val_limits() -> None:
    trainer = prec.Trainer(accelerator="cpu", overfit_batches=3, fast_dev_run=2, **QUIET)
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (3, 3, 2)
    with pytest.raises(prec.ConfigurationError, match="overfit_batches=2 sets limit_train_batches .* pass one"):
        prec.Trainer(accelerator="cpu", overfit_batches=2, limit_train_batches=5)
    with pytest.raises(prec.ConfigurationError, match="overfit_batches=1.5 as a fraction must lie in"):
        prec.Trainer(accelerator="cpu", overfit_batches=1.5)
    with pytest.raises(prec.ConfigurationError, match="overfit_batches='2' must be an int"):
        prec.Trainer(accelerator="cpu", overfit_batches="2")


# -- reload_dataloaders_every_n_epochs and when val_dataloader() is asked for ----------------------------------
def _requests(framework: str, **trainer_kwargs: Any) -> tuple[list[str], list[tuple[str, int, list[int]]]]:
    """Which loader methods were called, in order, and which samples each epoch saw (each call returns a loader
    over different samples, so a reloaded loader shows in what the steps see)."""
    requests: list[str] = []

    class Served(type(_recording_module(framework))):  # type: ignore[misc]
        def train_dataloader(self) -> DataLoader[Any]:
            requests.append(f"train@{self.trainer.current_epoch}")
            start = 4 * len([r for r in requests if r.startswith("train")])
            x = torch.randn(4, 4)
            return DataLoader(TensorDataset(x, torch.arange(start, start + 4)), batch_size=4)

        def val_dataloader(self) -> DataLoader[Any]:
            requests.append(f"val@{self.trainer.current_epoch}")
            start = 100 + 2 * len([r for r in requests if r.startswith("val")])
            return DataLoader(TensorDataset(torch.randn(2, 4), torch.arange(start, start + 2)), batch_size=2)

    model = Served()
    trainer = _trainer(framework, **{"max_epochs": 5, **trainer_kwargs})
    _quietly(lambda: trainer.fit(model))
    return requests, model.seen


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reload_dataloaders_every_n_epochs": 2},
        {"reload_dataloaders_every_n_epochs": 1, "num_sanity_val_steps": 0},
        {"reload_dataloaders_every_n_epochs": 3, "check_val_every_n_epoch": 1},
        {},
    ],
)
def test_reload_dataloaders_every_n_epochs_asks_for_the_loaders_again_as_lightning(kwargs: dict[str, Any]) -> None:
    requests, seen = _requests("prec", **kwargs)
    assert (requests, seen) == _requests("lightning", **kwargs)
    every = kwargs.get("reload_dataloaders_every_n_epochs", 0)
    assert len([r for r in requests if r.startswith("train")]) == (1 + (4 // every) if every else 1)


def test_reload_keeps_loaders_passed_to_fit() -> None:
    model = _recording_module("prec")
    trainer = prec.Trainer(accelerator="cpu", max_epochs=3, reload_dataloaders_every_n_epochs=1, **QUIET)
    trainer.fit(model, _indexed(8, 4), _indexed(4, 4))
    assert [indices for kind, _, indices in model.seen if kind == "train"] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 3


@pytest.mark.parametrize("case", ["limit_val_batches=0", "no validation_step"])
def test_val_dataloader_is_not_requested_when_validation_is_off_as_in_lightning(case: str) -> None:
    def requests(framework: str) -> list[str]:
        kwargs = {"limit_val_batches": 0} if case == "limit_val_batches=0" else {}
        called: list[str] = []

        class Module(type(_recording_module(framework))):  # type: ignore[misc]
            def train_dataloader(self) -> DataLoader[Any]:
                called.append("train_dataloader")
                return _indexed(8, 4)

            def val_dataloader(self) -> DataLoader[Any]:
                called.append("val_dataloader")
                return _indexed(4, 4)

        model = Module()
        if case == "no validation_step":
            model.validation_step = None
        trainer = _trainer(framework, max_epochs=2, **kwargs)
        _quietly(lambda: trainer.fit(model))
        assert [kind for kind, _, _ in model.seen if kind == "val"] == []
        return called

    assert requests("prec") == requests("lightning") == ["train_dataloader"]


def test_a_validation_loader_without_validation_step_is_said() -> None:
    model = _recording_module("prec")
    model.validation_step = None
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET)
    with pytest.warns(prec.PrecWarning, match="has no validation_step: validation is skipped"):
        trainer.fit(model, _indexed(8, 4), _indexed(4, 4))


# -- several test and predict loaders ---------------------------------------------------------------------------
def _evaluating_module(framework: str, calls: list[tuple[Any, ...]]) -> Any:
    class Evaluated(type(_recording_module(framework))):  # type: ignore[misc]
        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            value = batch[0].sum() * (dataloader_idx + 1)
            self.log("total", value, reduce_fx="sum")
            self.log("mean", value, on_step=True)
            calls.append(("test_step", batch_idx, dataloader_idx))

        def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            calls.append(("on_test_batch_end", batch_idx, dataloader_idx))

        def on_test_epoch_end(self) -> None:
            self.log("at_end", 7.0)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            calls.append(("predict_step", batch_idx, dataloader_idx))
            return batch[1] * 10 + dataloader_idx

    return Evaluated()


@pytest.mark.parametrize("container", [list, dict])
def test_several_test_loaders_return_and_name_results_as_lightning(container: type) -> None:
    def run(framework: str) -> tuple[Any, dict[str, float], list[tuple[Any, ...]]]:
        calls: list[tuple[Any, ...]] = []
        loaders = [_indexed(8, 4), _indexed(6, 3)]
        given = loaders if container is list else {"a": loaders[0], "b": loaders[1]}
        trainer = _trainer(framework)
        results = _quietly(lambda: trainer.test(_evaluating_module(framework, calls), given, verbose=False))
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        return results, metrics, calls

    results, metrics, calls = run("prec")
    expected_results, expected_metrics, expected_calls = run("lightning")
    assert calls == expected_calls
    assert len(results) == 2
    assert [sorted(entry) for entry in results] == [sorted(entry) for entry in expected_results]
    for entry, expected in zip(results, expected_results, strict=True):
        assert entry == pytest.approx(expected, rel=1e-6)
    assert metrics == pytest.approx(expected_metrics, rel=1e-6)
    assert "total/dataloader_idx_1" in results[1] and "at_end" in results[0]


def test_one_test_loader_in_a_list_keeps_plain_names_as_lightning() -> None:
    def run(framework: str) -> Any:
        calls: list[tuple[Any, ...]] = []
        return _quietly(lambda: _trainer(framework).test(_evaluating_module(framework, calls), [_indexed(8, 4)]))

    (results,), (expected,) = run("prec"), run("lightning")
    assert results == pytest.approx(expected, rel=1e-6)
    assert sorted(results) == ["at_end", "mean_epoch", "total"]


def test_several_predict_loaders_return_one_list_per_loader_as_lightning() -> None:
    def run(framework: str) -> tuple[Any, list[tuple[Any, ...]]]:
        calls: list[tuple[Any, ...]] = []
        trainer = _trainer(framework)
        loaders = [_indexed(8, 4), _indexed(3, 3)]
        return _quietly(lambda: trainer.predict(_evaluating_module(framework, calls), loaders)), calls

    (outputs, calls), (expected, expected_calls) = run("prec"), run("lightning")
    assert calls == expected_calls
    assert [[batch.tolist() for batch in per_loader] for per_loader in outputs] == [
        [batch.tolist() for batch in per_loader] for per_loader in expected
    ]


def test_several_loaders_need_a_step_that_takes_dataloader_idx() -> None:
    class NoIndex(prec.TrainingModule):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            pass

    with pytest.raises(prec.ConfigurationError, match=r"NoIndex.test_step takes no dataloader_idx.*2 loaders"):
        prec.Trainer(accelerator="cpu", **QUIET).test(NoIndex(), [_indexed(4, 2), _indexed(4, 2)])


def test_fit_still_takes_one_validation_loader() -> None:
    model = _recording_module("prec")
    with pytest.raises(prec.ConfigurationError, match="gave 2 DataLoaders; prec runs one loader per stage in fit"):
        prec.Trainer(accelerator="cpu", max_epochs=1, **QUIET).fit(
            model, _indexed(8, 4), [_indexed(4, 4), _indexed(4, 4)]
        )
