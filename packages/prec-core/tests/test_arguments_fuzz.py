"""Property: every argument of every public class is checked where it is given. Whatever value of whatever type a
user passes to a callback, a logger, a fit/validate/test/predict call, a DataModule or ``precision_options``, the
call either works or raises a :class:`prec.ConfigurationError` (a user's mistake, never a ``TypeError`` from deep
inside, never a :class:`prec.PluginError` blaming a plugin), and nothing hangs."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.callbacks.finetuning import freeze, unfreeze_and_add_param_group

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PrecWarning")

# Construction is cheap; a fit is a few CPU steps. Small budgets keep the whole file well under a minute.
CHEAP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUNS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", " ", "²", "1²", "x" * 5000, "a\x00b", "\udcff", "{", "{x", "{epoch:zz}", "min", "max"]),
    st.binary(max_size=3),
    st.lists(st.one_of(st.integers(-2, 4), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.one_of(st.integers(), st.text(max_size=3)), st.integers(), max_size=2),
    st.just(object()),
    st.just(Path("x" * 300)),
    st.builds(lambda n: numpy.arange(n), st.integers(0, 3)),
    st.just(torch.tensor([0.0])),
    st.just(torch.nn.Linear(1, 1)),
)


def _with_junk(*valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(valid), junk)


def _builds_or_refuses(build: Callable[[], Any]) -> Any:
    """Call ``build``; a ConfigurationError is a fine answer, anything else fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return build()
        except prec.ConfigurationError:
            return None


CALLBACK_ARGUMENTS: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    prec.ModelCheckpoint: {
        "dirpath": _with_junk(None, "ckpts", Path("ckpts")),
        "filename": _with_junk("{epoch}-{step}", "{epoch:02d}", "{val_loss:.3f}", "best"),
        "monitor": _with_junk(None, "val_loss"),
        "mode": _with_junk("min", "max"),
        "save_top_k": _with_junk(-1, 0, 1, 3),
        "every_n_train_steps": _with_junk(None, 0, 1, 5),
        "every_n_epochs": _with_junk(None, 0, 1, -1),
        "save_last": _with_junk(True, False),
    },
    prec.EarlyStopping: {
        "monitor": _with_junk("val_loss"),
        "min_delta": _with_junk(0.0, 0.1, 1),
        "patience": _with_junk(0, 3),
        "verbose": _with_junk(True, False),
        "mode": _with_junk("min", "max"),
        "strict": _with_junk(True, False),
        "check_finite": _with_junk(True, False),
        "stopping_threshold": _with_junk(None, 0.1),
        "divergence_threshold": _with_junk(None, 10.0),
        "check_on_train_epoch_end": _with_junk(None, True, False),
    },
    prec.LearningRateMonitor: {
        "logging_interval": _with_junk(None, "step", "epoch"),
        "log_momentum": _with_junk(True, False),
        "log_weight_decay": _with_junk(True, False),
    },
    prec.CSVLogger: {
        "save_dir": _with_junk(None, "logs", Path("logs")),
        "name": _with_junk("prec_logs", ""),
        "version": _with_junk(None, 0, 3, "run"),
        "flush_every_n_steps": _with_junk(1, 100),
    },
}
try:
    import torch.utils.tensorboard  # noqa: F401
except ImportError:  # TensorBoardLogger's own check refuses it; nothing more to draw
    pass
else:
    CALLBACK_ARGUMENTS[prec.TensorBoardLogger] = {
        **CALLBACK_ARGUMENTS[prec.CSVLogger],
        "hparams": _with_junk(None, {"lr": 0.1}),
    }


@CHEAP
@given(data=st.data(), cls=st.sampled_from(sorted(CALLBACK_ARGUMENTS, key=lambda c: c.__name__)))
def test_callbacks_and_loggers_build_or_raise_a_configuration_error(data: st.DataObject, cls: type) -> None:
    strategies = dict(CALLBACK_ARGUMENTS[cls])
    required = {"monitor": strategies.pop("monitor")} if cls is prec.EarlyStopping else {}
    drawn = data.draw(st.fixed_dictionaries(required, optional=strategies), label=cls.__name__)
    built = _builds_or_refuses(lambda: cls(**drawn))
    if built is not None and isinstance(built, (prec.CSVLogger, prec.TensorBoardLogger)):
        assert built.save_dir is None or isinstance(built.save_dir, Path)


@CHEAP
@given(
    modules=st.one_of(st.sampled_from(["the model", "a list of it"]), junk),
    lr=_with_junk(None, 0.1),
    initial_denom_lr=_with_junk(10.0, 2),
    train_bn=_with_junk(True, False),
)
def test_finetuning_helpers_take_checked_arguments(modules: Any, lr: Any, initial_denom_lr: Any, train_bn: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    if isinstance(modules, str) and modules in ("the model", "a list of it"):
        modules = model if modules == "the model" else [model]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    before = [parameter.requires_grad for parameter in model.parameters()]
    if (
        _builds_or_refuses(lambda: unfreeze_and_add_param_group(modules, optimizer, lr, initial_denom_lr, train_bn))
        is None
    ):
        if len(optimizer.param_groups) == 1:
            assert [parameter.requires_grad for parameter in model.parameters()] == before  # nothing half done
    _builds_or_refuses(lambda: freeze(modules, train_bn))


PRECISION_OPTIONS = st.dictionaries(
    st.sampled_from(["convert_inputs_from", "keep_float32", "master_weights", "tf32", "cache_enabled", "init_scale"]),
    junk,
    max_size=2,
)


@CHEAP
@given(
    precision=st.sampled_from(["32-true", "bf16-true", "16-true", "bf16-mixed", "64-true"]), options=PRECISION_OPTIONS
)
def test_precision_options_are_the_users_mistake_not_the_plugins(precision: str, options: dict[str, Any]) -> None:
    built = _builds_or_refuses(lambda: prec.get_precision(precision, accelerator="cpu", **options))
    assert built is None or isinstance(built, prec.Precision)


class _Tiny(prec.TrainingModule):
    """Its steps ignore the batch, so any iterable the checks let through runs (what is checked is the data's
    shape as a loader, not the user's step)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def _loss(self) -> torch.Tensor:
        return self.layer(torch.ones(1, 2)).pow(2).mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss())

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss())

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader[Any]:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


class _Data(prec.DataModule):
    """A DataModule whose loaders return whatever the test drew."""

    def __init__(self, loader: Any) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self) -> Any:
        return self.loader

    def val_dataloader(self) -> Any:
        return self.loader

    def test_dataloader(self) -> Any:
        return self.loader

    def predict_dataloader(self) -> Any:
        return self.loader


LOADERS = st.one_of(st.sampled_from(["loader", None]), junk)
CKPT_PATHS = _with_junk(None, "best", "last", "missing.ckpt")


@RUNS
@given(
    stage=st.sampled_from(["fit", "validate", "test", "predict"]),
    loader=LOADERS,
    through_datamodule=st.booleans(),
    ckpt_path=CKPT_PATHS,
)
def test_stage_arguments_and_datamodule_results_are_checked(
    stage: str, loader: Any, through_datamodule: bool, ckpt_path: Any, tmp_path: Path
) -> None:
    loader = _loader() if isinstance(loader, str) and loader == "loader" else loader
    trainer = prec.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        limit_test_batches=1,
        limit_predict_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = (
        {"datamodule": _Data(loader)}
        if through_datamodule
        else {("train_dataloaders" if stage == "fit" else "dataloaders"): loader}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(trainer, stage)(_Tiny(), ckpt_path=ckpt_path, **data)
        except (prec.ConfigurationError, prec.CheckpointError):
            return


_EMPTY_LOADER = """
import warnings, torch, prec
warnings.simplefilter("ignore")

class Module(prec.TrainingModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(torch.ones(1, 2)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

for loader in ([], iter([])):
    trainer = prec.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Module(), loader)
    assert any("gave no batch" in str(w.message) for w in caught), [str(w.message) for w in caught]
print("ended")
"""


def test_an_empty_training_loader_under_max_steps_alone_ends_fit_with_a_warning_instead_of_hanging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _EMPTY_LOADER], capture_output=True, text=True, timeout=300, check=False
    )  # the timeout is a hang guard only: the run takes a few seconds
    assert done.returncode == 0 and "ended" in done.stdout, done.stderr[-3000:]
