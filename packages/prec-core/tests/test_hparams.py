"""save_hyperparameters: read from the __init__ frame like Lightning, stored in checkpoints, rebuilt from them."""

from __future__ import annotations

import inspect
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.model.hparams import CHECKPOINT_KEY, checkpoint_hparams


class Net(prec.TrainingModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1, activation: str = "relu", **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_hparams(self.hparams)  # what the Trainer will do itself


def test_all_init_arguments_by_default_with_kwargs_flattened() -> None:
    net = Net(hidden=16, seed=3)
    assert net.hparams == {"hidden": 16, "lr": 0.1, "activation": "relu", "seed": 3}
    assert isinstance(net.hparams, prec.AttributeDict) and net.hparams.hidden == 16
    net.hparams.lr = 0.5
    assert net.hparams["lr"] == 0.5 and net.hparams_initial.lr == 0.1
    with pytest.raises(AttributeError, match="no hyperparameter 'missing'"):
        _ = net.hparams.missing


def test_names_ignore_dicts_and_namespaces() -> None:
    class Picky(prec.TrainingModule):
        def __init__(self, a: int, b: int, backbone: torch.nn.Module, mode: str = "names") -> None:
            super().__init__()
            if mode == "names":
                self.save_hyperparameters("a", "b")
            elif mode == "ignore":
                self.save_hyperparameters(ignore=["backbone"])
            elif mode == "dict":
                self.save_hyperparameters({"width": a * b})
            else:
                self.save_hyperparameters(Namespace(depth=b))

    backbone = torch.nn.Linear(1, 1)
    assert Picky(1, 2, backbone).hparams == {"a": 1, "b": 2}
    assert Picky(1, 2, backbone, "ignore").hparams == {"a": 1, "b": 2, "mode": "ignore"}
    assert Picky(3, 4, backbone, "dict").hparams == {"width": 12}
    assert Picky(3, 4, backbone, "namespace").hparams == {"depth": 4}
    with pytest.warns(prec.PrecWarning, match=r"'backbone' is a torch.nn.Module.*ignore=\['backbone'\]"):

        class Greedy(prec.TrainingModule):
            def __init__(self, backbone: torch.nn.Module) -> None:
                super().__init__()
                self.save_hyperparameters()

        Greedy(backbone)


def test_a_subclass_chain_collects_every_init_and_the_outermost_wins() -> None:
    class Base(prec.TrainingModule):
        def __init__(self, width: int = 4, depth: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, width: int = 8, dropout: float = 0.1) -> None:
            super().__init__(width=width, depth=3)

    assert Child(width=32).hparams == {"width": 32, "depth": 3, "dropout": 0.1}


def test_explicit_frame_and_bad_arguments() -> None:
    class Framed(prec.TrainingModule):
        def __init__(self, size: int = 2) -> None:
            super().__init__()
            self._helper(inspect.currentframe())

        def _helper(self, frame: Any) -> None:
            self.save_hyperparameters(frame=frame)

    assert Framed(5).hparams == {"size": 5}

    class Wrong(prec.TrainingModule):
        def __init__(self, size: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters("sise")

    with pytest.raises(prec.ConfigurationError, match=r"\['sise'\] are not arguments of Wrong.__init__"):
        Wrong()


def test_unstorable_values_are_left_out_of_checkpoints_with_a_warning() -> None:
    with pytest.warns(prec.PrecWarning, match=r"'path' \(PosixPath\) cannot be stored in a checkpoint"):
        net = Net(path=Path("/tmp"), schedule=[1, 2, {"a": 0.5}])
    with pytest.warns(prec.PrecWarning, match="'path'"):
        stored = checkpoint_hparams(net.hparams)
    assert "path" not in stored and stored["schedule"] == [1, 2, {"a": 0.5}] and type(stored) is dict


def test_checkpoint_round_trip_rebuilds_the_module_from_its_hyperparameters(tmp_path: Path) -> None:
    x = torch.randn(32, 4)
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)
    net = Net(hidden=12, lr=0.05, activation="gelu")
    trainer = prec.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False)
    trainer.fit(net, loader)
    path = tmp_path / "net.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved[CHECKPOINT_KEY] == {"hidden": 12, "lr": 0.05, "activation": "gelu"}

    restored = prec.load_from_checkpoint(Net, path)
    assert restored.hparams == net.hparams
    for name, tensor in net.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    overridden = prec.load_from_checkpoint(Net, path, lr=0.5)
    assert overridden.hparams.lr == 0.5 and overridden.hparams.hidden == 12
    with pytest.raises(prec.CheckpointError, match="cannot build Net from checkpoint"):
        prec.load_from_checkpoint(Net, path, unknown_positional_only=1, hidden="x")


def test_empty_container_saves_nothing_and_primitives_are_refused() -> None:
    class Empty(prec.TrainingModule):
        def __init__(self, value: Any = None) -> None:
            super().__init__()
            self.save_hyperparameters(value)

    assert Empty({}).hparams == {}
    with pytest.raises(prec.ConfigurationError, match="int is not allowed"):
        Empty(3)
