"""Property: whatever arguments a user passes, building a Trainer or a precision either works or raises a
:class:`prec.ConfigurationError` (or one of its subclasses), never another exception type."""

from __future__ import annotations

import warnings
from typing import Any

import numpy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prec
from prec.training.config import LEFT_OUT, TrainerConfig

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PrecWarning")

# Bounded: construction is cheap (no fit), so 300 examples take a few seconds.
BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-true", "64-true", "16-mixed", "auto", "fp8", "32", 16, 32]
ACCELERATORS = ["cpu", "CPU", "Auto", "auto", "gpu", "cuda", "tpu", "xla", "mps", "nonsense", " cpu", ""]

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=3),
    st.lists(st.one_of(st.integers(-2, 4), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.one_of(st.integers(), st.text(max_size=3)), st.integers(), max_size=2),
    st.just(object()),
    st.builds(lambda n: numpy.arange(n), st.integers(0, 3)),
    st.just(numpy.array([[0]])),
    st.just(torch.tensor([0])),
)


def _with_junk(*valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(valid), junk)


counts = _with_junk(0, 1, 2, -1, None, 3, 1.0)
limits = _with_junk(None, 0, 1, 2, 0.0, 0.5, 1.0, 1.5, -1)
flags = _with_junk(True, False)

TRAINER_ARGUMENTS: dict[str, st.SearchStrategy[Any]] = {
    "accelerator": _with_junk(*ACCELERATORS),
    "devices": _with_junk("auto", 1, 2, -1, "1", "0,1", "0,0", [0], [0, 1], [1], (0,), 10**9, 1.5, [""]),
    "precision": _with_junk(*PRECISIONS),
    "plugins": st.one_of(
        st.sampled_from([None, "bf16-mixed", 5]),
        st.builds(lambda n: [prec.Precision() for _ in range(n)], st.integers(0, 2)),
        st.builds(prec.Precision),
    ),
    "strategy": _with_junk("auto", "single", "ddp", "fsdp", "DDP", "dpp"),
    "num_nodes": counts,
    "max_epochs": counts,
    "min_epochs": counts,
    "max_steps": counts,
    "min_steps": counts,
    "limit_train_batches": limits,
    "limit_val_batches": limits,
    "limit_test_batches": limits,
    "limit_predict_batches": limits,
    "overfit_batches": limits,
    "check_val_every_n_epoch": counts,
    "val_check_interval": limits,
    "num_sanity_val_steps": counts,
    "reload_dataloaders_every_n_epochs": counts,
    "log_every_n_steps": counts,
    "gradient_clip_val": limits,
    "gradient_clip_algorithm": _with_junk("norm", "value", "Norm", "l2"),
    "accumulate_grad_batches": counts,
    "fast_dev_run": counts,
    "deterministic": _with_junk(True, False, "warn", None),
    "benchmark": _with_junk(True, False, None),
    "logger": st.one_of(st.sampled_from([True, False, None, "csv", 5]), st.builds(prec.CSVLogger)),
    "callbacks": st.one_of(
        st.sampled_from([None, 5, "cb", [5]]),
        st.builds(prec.Callback),
        st.lists(st.builds(prec.Callback), max_size=2),
    ),
    "enable_progress_bar": flags,
    "enable_checkpointing": flags,
    "enable_model_summary": flags,
    "default_root_dir": _with_junk(None, "runs", "", "a\x00b", b"runs"),
    # Unknown option names are each precision's own check (prec.check_options in its plugin); here only the
    # shapes every precision shares: a dict of str keys, or not.
    "nonfinite": st.sampled_from(["skip", "raise", "off", "ignore", None, 3, prec.NonFinitePolicy(warn_after=2)]),
    "precision_options": st.sampled_from([None, {}, 5, "init_scale=2", [("a", 1)], {1: 2}, {None: 1}]),
}
UNKNOWN_ARGUMENTS = st.dictionaries(
    st.one_of(st.sampled_from(sorted(LEFT_OUT)), st.sampled_from(["max_epoch", "gpu", "lr", "batch_size"])),
    junk,
    max_size=2,
)


#: Values every precision and this machine accept, so that a mistake in one argument is not hidden by another.
VALID_ARGUMENTS: dict[str, st.SearchStrategy[Any]] = {
    "accelerator": st.sampled_from(["cpu", "CPU", "Auto"]),
    "precision": st.sampled_from(["32-true", "bf16-mixed", "bf16-true", "16-true", "64-true", None]),
    "strategy": st.sampled_from(["auto", "single"]),
    "devices": st.sampled_from(["auto", 1, "1", [0], None]),
    "max_epochs": st.sampled_from([None, 0, 3]),
    "max_steps": st.sampled_from([None, -1, 5]),
    "limit_train_batches": st.sampled_from([None, 2, 0.5]),
    "gradient_clip_val": st.sampled_from([None, 0, 1.0]),
    "logger": st.sampled_from([False, True]),
    "callbacks": st.sampled_from([None, []]),
    "default_root_dir": st.sampled_from([None, "runs"]),
}


def test_the_strategies_cover_every_argument() -> None:
    assert sorted(TRAINER_ARGUMENTS) == sorted(TrainerConfig.argument_names())


@BOUNDED
@given(
    valid=st.fixed_dictionaries({}, optional=VALID_ARGUMENTS),
    name=st.sampled_from(sorted(TRAINER_ARGUMENTS)),
    data=st.data(),
)
def test_one_bad_argument_among_good_ones_is_a_configuration_error_or_works(
    valid: dict[str, Any], name: str, data: st.DataObject
) -> None:
    arguments = {**valid, name: data.draw(TRAINER_ARGUMENTS[name], label=name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = prec.Trainer(**arguments)
        except prec.ConfigurationError:
            return
    assert isinstance(trainer.config, TrainerConfig)


@BOUNDED
@given(
    arguments=st.fixed_dictionaries({}, optional=TRAINER_ARGUMENTS),
    unknown=st.one_of(st.just({}), UNKNOWN_ARGUMENTS),
)
def test_trainer_construction_works_or_raises_a_configuration_error(
    arguments: dict[str, Any], unknown: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = prec.Trainer(**arguments, **unknown)
        except prec.ConfigurationError:
            return
    assert not unknown
    config = trainer.config
    assert isinstance(config.max_steps, int) and config.max_steps >= -1
    assert config.max_epochs is None or (isinstance(config.max_epochs, int) and config.max_epochs >= 0)
    assert trainer.devices and all(type(index) is int and index >= 0 for index in trainer.devices)
    assert len(set(trainer.devices)) == len(trainer.devices)
    assert all(isinstance(callback, prec.Callback) for callback in trainer.callbacks)
    assert isinstance(trainer.precision_plugin, prec.Precision)


@BOUNDED
@given(
    precision=_with_junk(*PRECISIONS),
    accelerator=st.one_of(st.sampled_from([a for a in ACCELERATORS if a == a.lower()]), st.text(max_size=4)),
)
def test_get_precision_works_or_raises_a_configuration_error(precision: Any, accelerator: str) -> None:
    try:
        plugin = prec.get_precision(precision, accelerator=accelerator)
    except prec.ConfigurationError:
        return
    assert isinstance(plugin, prec.Precision)


# -- get_precision's accelerator check and the same option errors at every precision -------------------------
@pytest.mark.parametrize("accelerator", [None, 5, ["cpu"]])
def test_get_precision_bad_accelerator_is_a_configuration_error(accelerator: Any) -> None:
    with pytest.raises(prec.ConfigurationError, match="accelerator="):
        prec.get_precision("32-true", accelerator=accelerator)


def test_get_precision_accelerator_names_ignore_case() -> None:
    assert isinstance(prec.get_precision("32-true", accelerator="Auto"), prec.Precision)


@pytest.mark.parametrize(
    "precision",
    [
        "32-true",
        "16-true",
        "bf16-true",
        "bf16-mixed",
        "64-true",
    ],
)
def test_an_unknown_precision_option_is_a_configuration_error_at_every_precision(precision: str) -> None:
    with pytest.raises(prec.ConfigurationError, match="foo"):
        prec.Trainer(accelerator="cpu", precision=precision, precision_options={"foo": 1}, logger=False)
    with pytest.raises(prec.ConfigurationError, match="foo"):
        prec.get_precision(precision, accelerator="cpu", foo=1)
