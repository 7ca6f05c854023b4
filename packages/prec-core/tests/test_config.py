"""Every Trainer argument is checked up front: a mistake is a ConfigurationError naming the argument."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch

import prec
from prec.errors import ConfigurationError
from prec.training.config import LEFT_OUT, TrainerConfig

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def _trainer(**arguments: Any) -> prec.Trainer:
    return prec.Trainer(**{"accelerator": "cpu", "logger": False, **arguments})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_epochs": "3"}, r"max_epochs='3' must be an int >= 0, or None\. Did you mean max_epochs=3\?"),
        ({"max_epochs": 2.0}, r"max_epochs=2\.0 must be an int >= 0, or None\. Did you mean max_epochs=2\?"),
        ({"max_epochs": -1}, r"max_epochs=-1 must be an int >= 0"),
        ({"max_steps": 1.5}, r"max_steps=1\.5 must be an int >= 0, or -1 / None"),
        ({"max_steps": -2}, r"max_steps=-2 must be"),
        ({"max_steps": True}, r"max_steps=True must be"),
        ({"min_epochs": -1}, r"min_epochs=-1 must be an int >= 0, or None"),
        ({"min_steps": "2"}, r"min_steps='2' must be"),
        ({"min_epochs": 5, "max_epochs": 2}, r"min_epochs=5 is more than max_epochs=2"),
        ({"min_steps": 10, "max_steps": 3}, r"min_steps=10 is more than max_steps=3"),
        ({"min_epochs": 2000}, r"min_epochs=2000 is more than max_epochs=1000.*neither it nor max_steps"),
        ({"callbacks": 5}, r"callbacks=5 must be a prec\.Callback, a list of them, or None; got int"),
        ({"callbacks": "ModelCheckpoint"}, r"callbacks='ModelCheckpoint' must be a prec\.Callback"),
        ({"callbacks": [prec.Callback(), 5]}, r"callbacks must be prec\.Callback instances, got \[5\]"),
        ({"default_root_dir": {}}, r"default_root_dir=\{\} must be a non-empty str or os\.PathLike path, or None"),
        ({"default_root_dir": ""}, r"default_root_dir='' must be a non-empty str or os\.PathLike path"),
        ({"default_root_dir": "a\x00b"}, r"must be a non-empty str or os\.PathLike path.*no NUL"),
        ({"default_root_dir": b"logs"}, r"default_root_dir=b'logs' must be a non-empty str"),
        ({"default_root_dir": "x" * 5000}, r"default_root_dir='x+\.\.\.x+' is too long"),
        ({"num_nodes": 0}, r"num_nodes=0 must be an int >= 1"),
        ({"num_nodes": 1.0}, r"num_nodes=1\.0 must be an int >= 1\. Did you mean num_nodes=1\?"),
        ({"accumulate_grad_batches": 0}, r"accumulate_grad_batches=0 must be an int >= 1"),
        ({"accumulate_grad_batches": "2"}, r"accumulate_grad_batches='2' must be an int >= 1"),
        ({"check_val_every_n_epoch": 0}, r"check_val_every_n_epoch=0 must be an int >= 1"),
        ({"check_val_every_n_epoch": None}, r"check_val_every_n_epoch=None must be an int >= 1"),
        ({"val_check_interval": 0}, r"val_check_interval=0 would never validate"),
        ({"val_check_interval": 1.5}, r"val_check_interval=1\.5 as a fraction must lie in \[0, 1\]"),
        ({"limit_train_batches": -1}, r"limit_train_batches=-1 must be >= 0"),
        ({"limit_val_batches": float("nan")}, r"limit_val_batches=nan must be an int \(batches\), a float"),
        ({"limit_test_batches": "all"}, r"limit_test_batches='all' must be an int \(batches\)"),
        ({"limit_predict_batches": 2.0}, r"limit_predict_batches=2\.0 as a fraction must lie in \[0, 1\]"),
        ({"gradient_clip_val": -1.0}, r"gradient_clip_val=-1\.0 must be a finite number >= 0"),
        ({"gradient_clip_val": float("inf")}, r"gradient_clip_val=inf must be a finite number >= 0"),
        ({"gradient_clip_val": "1"}, r"gradient_clip_val='1' must be a finite number"),
        ({"gradient_clip_algorithm": "l2"}, r"gradient_clip_algorithm='l2' must be 'norm' or 'value'"),
        ({"gradient_clip_algorithm": 2}, r"gradient_clip_algorithm=2 must be 'norm' or 'value'"),
        ({"enable_progress_bar": 1}, r"enable_progress_bar=1 must be True or False"),
        ({"enable_progress_bar": None}, r"enable_progress_bar=None must be True or False"),
        ({"enable_checkpointing": "yes"}, r"enable_checkpointing='yes' must be True or False"),
        ({"enable_model_summary": 0}, r"enable_model_summary=0 must be True or False"),
        ({"log_every_n_steps": 0}, r"log_every_n_steps=0 must be an int >= 1"),
        ({"log_every_n_steps": 1.5}, r"log_every_n_steps=1\.5 must be an int >= 1"),
        ({"num_sanity_val_steps": -2}, r"num_sanity_val_steps=-2 must be an int >= 0, or -1"),
        ({"fast_dev_run": -1}, r"fast_dev_run=-1 must be a bool or an int >= 0"),
        ({"fast_dev_run": "true"}, r"fast_dev_run='true' must be a bool or an int"),
        ({"deterministic": "yes"}, r"deterministic='yes' must be True, False, 'warn' or None"),
        ({"deterministic": 1}, r"deterministic=1 must be True, False, 'warn' or None"),
        ({"precision_options": 5}, r"precision_options=5 must be a dict of option names to values"),
        ({"precision_options": [("init_scale", 2)]}, r"precision_options=\[\('init_scale', 2\)\] must be a dict"),
        ({"precision_options": {1: 2}}, r"precision_options keys must be option names \(str\); got \[1\]"),
        ({"plugins": "bf16-mixed"}, r"plugins= takes prec\.Precision instances"),
        ({"plugins": [prec.Precision(), prec.Precision()]}, r"plugins= holds 2 precisions; pass one"),
        ({"plugins": prec.Precision(), "precision": "32-true"}, r"both choose the precision; pass one"),
        ({"plugins": prec.Precision(), "precision_options": {"a": 1}}, r"precision_options apply to a precision"),
        ({"strategy": 5}, r"strategy=5 must be a strategy name such as 'auto'"),
        ({"strategy": ""}, r"strategy='' must be a strategy name"),
        ({"logger": "csv"}, r"logger='csv': 'csv' is not a logger"),
    ],
)
def test_bad_argument_is_a_configuration_error_naming_it(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _trainer(**arguments)


@pytest.mark.parametrize("accelerator", [None, 5, "", ["cpu"]])
def test_bad_accelerator_type(accelerator: object) -> None:
    with pytest.raises(ConfigurationError, match=r"accelerator=.* must be an accelerator name such as 'cpu'"):
        prec.Trainer(accelerator=accelerator, logger=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("accelerator", ["Auto", "AUTO", "CPU", " cpu "])
def test_accelerator_names_ignore_case_and_spaces(accelerator: str) -> None:
    assert prec.Trainer(accelerator=accelerator, logger=False).accelerator.name == "cpu"


def test_strategy_names_ignore_case() -> None:
    assert prec.Trainer(accelerator="cpu", strategy="Single", logger=False).strategy.name == "single"


# -- devices -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (1.5, r"devices=1\.5 is a float; pass an int >= 1"),
        (2.0, r"devices=2\.0 is a float.*Did you mean devices=2\?"),
        ([""], r"devices=\[''\] holds \[''\], which are not device indices"),
        ([0.0], r"which are not device indices"),
        ([True], r"which are not device indices"),
        ([], r"devices=\[\] selects no device"),
        ("0,0", r"devices='0,0' lists device\(s\) \[0\] more than once"),
        ([0, 0], r"lists device\(s\) \[0\] more than once"),
        ([-1], r"negative indices \[-1\]; indices start at 0"),
        ("0,-1", r"negative indices \[-1\]"),
        ("0,x", r"devices='0,x' is not a list of indices"),
        ("", r"devices='' is not valid"),
        ("two", r"devices='two' is not valid"),
        (0, r"devices=0 must be >= 1, -1 \(every device\) or 'auto'"),
        (-2, r"devices=-2 must be >= 1"),
        (True, r"devices=True is a bool"),
        ({0: 1}, r"devices=\{0: 1\} \(dict\) is not valid"),
        (numpy.array([[0, 1]]), r"\(ndarray\) is not valid"),
        (numpy.array([0.5]), r"which are not device indices"),
        (range(10**12), r"asks for 1000000000000 devices; no machine has that many"),
    ],
)
def test_bad_devices(devices: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _trainer(devices=devices)


def test_devices_beyond_the_machine_are_refused_without_building_a_list() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ConfigurationError, match=r"devices=1000000000 asks for 1000000000 cpu devices"):
            _trainer(devices=10**9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # a billion-element list would take 8 GB


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (None, [0]),
        ("auto", [0]),
        ("AUTO", [0]),
        (1, [0]),
        ("1", [0]),
        (" 1 ", [0]),
        ("0,", [0]),
        ([0], [0]),
        ((0,), [0]),
        (numpy.array([0]), [0]),
        (torch.tensor([0]), [0]),
        (numpy.int64(1), [0]),
    ],
)
def test_accepted_devices(devices: object, expected: list[int]) -> None:
    assert _trainer(devices=devices).devices == expected


def test_numpy_indices_become_python_ints() -> None:
    accelerator = prec.get_registry().accelerator("cpu")
    if accelerator.device_count() < 2:
        pytest.skip("needs 2 CPU cores")
    indices = accelerator.parse_devices(numpy.array([0, 1]))
    assert indices == [0, 1] and all(type(index) is int for index in indices)
    assert accelerator.parse_devices(-1) == list(range(accelerator.device_count()))


# -- values that are accepted, in their canonical form ------------------------------------------------------------
def test_defaults() -> None:
    config = _trainer().config
    assert config == TrainerConfig(accelerator="cpu", logger=False)
    assert (config.max_epochs, config.max_steps, config.min_epochs, config.min_steps) == (1000, -1, None, None)
    assert (config.log_every_n_steps, config.num_sanity_val_steps, config.fast_dev_run) == (50, 2, 0)
    assert config.enable_checkpointing and config.enable_model_summary and config.enable_progress_bar
    assert config.deterministic is None
    assert config.default_root_dir == Path.cwd()


def test_max_steps_none_means_no_step_limit() -> None:
    trainer = _trainer(max_steps=None, max_epochs=2)
    assert (trainer.max_steps, trainer.max_epochs) == (-1, 2)
    assert _trainer(max_steps=None).max_epochs == 1000


def test_a_step_limit_alone_sets_no_epoch_limit() -> None:
    assert _trainer(max_steps=5).max_epochs is None


@pytest.mark.parametrize(("given", "expected"), [(False, 0), (True, 1), (0, 0), (7, 7)])
def test_fast_dev_run_is_a_batch_count(given: bool | int, expected: int) -> None:
    assert _trainer(fast_dev_run=given).fast_dev_run == expected


@pytest.mark.parametrize("value", [True, False, "warn", None])
def test_deterministic_values(value: object) -> None:
    assert _trainer(deterministic=value).config.deterministic == value


def test_new_lightning_arguments_are_kept_on_the_trainer() -> None:
    trainer = _trainer(
        log_every_n_steps=1,
        enable_checkpointing=False,
        num_sanity_val_steps=-1,
        enable_model_summary=False,
        limit_test_batches=0.5,
        limit_predict_batches=3,
        min_epochs=1,
        min_steps=2,
        max_epochs=4,
    )
    assert (trainer.log_every_n_steps, trainer.enable_checkpointing, trainer.num_sanity_val_steps) == (1, False, -1)
    assert (trainer.limit_test_batches, trainer.limit_predict_batches) == (0.5, 3)
    assert (trainer.min_epochs, trainer.min_steps, trainer.enable_model_summary) == (1, 2, False)


def test_canonical_forms() -> None:
    callback = prec.Callback()
    config = _trainer(
        callbacks=(c for c in [callback]),
        gradient_clip_val=0,
        gradient_clip_algorithm="Value",
        limit_train_batches=numpy.int64(3),
        limit_val_batches=numpy.float64(0.5),
        default_root_dir=Path("runs"),
        precision_options=None,
    ).config
    assert config.callbacks == (callback,)
    assert (config.gradient_clip_val, config.gradient_clip_algorithm) == (None, "value")
    assert type(config.limit_train_batches) is int and type(config.limit_val_batches) is float
    assert config.default_root_dir == Path("runs") and dict(config.precision_options) == {}


def test_config_is_frozen_and_its_options_read_only() -> None:
    config = _trainer(precision_options={}).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.precision_options["init_scale"] = 2  # type: ignore[index]


def test_replace_revalidates() -> None:
    config = _trainer().config
    assert dataclasses.replace(config, max_epochs=3).max_epochs == 3
    with pytest.raises(ConfigurationError, match="max_epochs='3'"):
        dataclasses.replace(config, max_epochs="3")


def test_clip_gradients_reuses_the_same_check() -> None:
    trainer = _trainer()
    with pytest.raises(ConfigurationError, match=r"gradient_clip_algorithm='l3' must be 'norm' or 'value'"):
        trainer.clip_gradients(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), 1.0, "l3")


def test_an_unreadable_working_directory_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    gone.rmdir()
    try:
        with pytest.raises(ConfigurationError, match=r"default_root_dir=None means the current directory"):
            _trainer()
        assert _trainer(default_root_dir=tmp_path).default_root_dir == tmp_path
    finally:
        os.chdir(tmp_path)


# -- arguments the Trainer does not take ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LEFT_OUT))
def test_left_out_lightning_arguments_say_why_and_what_instead(name: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"Trainer\({name}=\.\.\.\) is not supported: .+") as error:
        _trainer(**{name: True})
    assert "Accepted arguments" not in str(error.value)


@pytest.mark.parametrize(
    "name",
    [
        "amp_backend",
        "auto_lr_find",
        "profiler",
        "sync_batchnorm",
        "inference_mode",
        "barebones",
        "detect_anomaly",
        "use_distributed_sampler",
    ],
)
def test_lightning_2_arguments_prec_leaves_out_are_covered(name: str) -> None:
    assert name in LEFT_OUT


def test_unknown_argument_gets_a_did_you_mean_not_a_type_error() -> None:
    with pytest.raises(ConfigurationError, match=r"no argument 'max_epoch'\. Did you mean 'max_epochs'\?") as error:
        _trainer(max_epoch=3)
    assert "Accepted arguments: accelerator, devices" in str(error.value)
    with pytest.raises(ConfigurationError, match=r"no argument 'wibble'\.\n"):
        _trainer(wibble=1)


def test_several_unknown_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigurationError) as error:
        _trainer(profiler="simple", gpus=1, log_every_n_step=5)
    text = str(error.value)
    assert "Trainer(profiler=...)" in text and "Trainer(gpus=...)" in text and "'log_every_n_steps'" in text


def test_every_argument_is_documented_and_in_the_signature() -> None:
    import inspect

    signature = [name for name in inspect.signature(prec.Trainer).parameters if name != "unknown"]
    assert sorted(signature) == sorted(TrainerConfig.argument_names())
    doc = prec.Trainer.__doc__ or ""
    assert [name for name in signature if f"        {name}: " not in doc] == []
    assert not set(signature) & set(LEFT_OUT)
