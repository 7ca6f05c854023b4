"""What a newcomer reads when something is off: a readable length whatever is installed, what to install for a
first-party precision, the real reason for a rejected option, and a warning when a resumed run is already done."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.names import readable_list


class _ManyPrecisions:
    """A plugin that registers ten thousand precision names on the cpu."""

    @prec.hookimpl
    def prec_register_precisions(self, register: Any) -> None:
        for index in range(10_000):
            register(f"many-{index:05d}-true", "cpu", lambda accelerator, index=index: prec.Precision())


@pytest.fixture
def many_precisions() -> Iterator[None]:
    name = prec.register_plugin(_ManyPrecisions(), name="many-precisions")
    yield
    prec.unregister_plugin(name)


def test_readable_list_says_how_many_more() -> None:
    assert readable_list(["a", "b"]) == "a, b"
    assert readable_list([]) == "none"
    assert readable_list(map(str, range(25)), 3) == "0, 1, 2 and 22 more"


@pytest.mark.parametrize("precision", ["nonsense-precision", "16-mixed"])
def test_errors_stay_readable_with_ten_thousand_precisions(many_precisions: None, precision: str) -> None:
    with pytest.raises(prec.ConfigurationError) as raised:
        prec.Trainer(accelerator="cpu", precision=precision, logger=False)
    message = str(raised.value)
    assert len(message) < 2000, len(message)
    assert "more" in message


def _trainer_error(precision: str, disabled: str) -> str:
    code = (
        "import prec\n"
        "try:\n"
        f"    prec.Trainer(accelerator='cpu', precision={precision!r}, logger=False)\n"
        "except prec.ConfigurationError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    environment = {**os.environ, "PREC_DISABLED_PLUGINS": disabled}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("precision", "plugin", "package"),
    [("fp8-mixed", "torchao", "prec-torchao"), ("bnb-nf4", "bnb", "prec-bnb"), ("64-true", "double", "prec-double")],
)
def test_a_first_party_precision_without_its_plugin_names_the_package(
    precision: str, plugin: str, package: str
) -> None:
    message = _trainer_error(precision, plugin)
    assert "UnsupportedPrecisionError" in message, message
    assert "not a precision name" not in message and "Did you mean" not in message, message
    assert package in message, message


def test_mixed_precision_wrapper_rejects_an_unknown_keyword_as_unknown_not_as_a_scaler_option() -> None:
    with pytest.raises(prec.ConfigurationError, match="unknown option.*keep_float32.*build_mixed") as raised:
        prec.MixedPrecision("my-mixed", "cpu", torch.bfloat16, keep_float32=[torch.nn.LayerNorm])
    assert "has no grad scaler" not in str(raised.value)


class _Tiny(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resuming_a_finished_run_warns_instead_of_ending_silently(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    options: dict[str, Any] = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
    first = prec.Trainer(max_steps=4, default_root_dir=tmp_path, enable_checkpointing=False, **options)
    first.fit(_Tiny(), loader)
    first.save_checkpoint(tmp_path / "done.ckpt")
    again = prec.Trainer(max_steps=3, default_root_dir=tmp_path, enable_checkpointing=False, **options)
    with pytest.warns(prec.PrecWarning, match=r"already finished \(global_step=4 >= max_steps=3\)"):
        again.fit(_Tiny(), loader, ckpt_path=tmp_path / "done.ckpt")
    further = prec.Trainer(max_steps=6, default_root_dir=tmp_path, enable_checkpointing=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)
        further.fit(_Tiny(), loader, ckpt_path=tmp_path / "done.ckpt")
    assert further.global_step == 6


def test_the_cli_names_an_unsupported_pair_with_the_trainers_reason_not_a_python_list() -> None:
    from click.testing import CliRunner

    from prec.cli.app import main

    result = CliRunner().invoke(
        main,
        ["bench", "--precision", "16-mixed", "--accelerator", "cpu", "--steps", "3", "--warmup", "1", "--repeats", "1"],
    )
    assert result.exit_code != 0
    assert "['16-mixed']" not in result.output
    assert "16-mixed needs a GPU" in result.output and "bf16-mixed" in result.output, result.output


def test_bench_explains_when_its_recommendation_and_auto_differ() -> None:
    from prec.cli.bench_report import _why_they_differ

    differ = {"recommendation": {"precision": "32-true"}, "auto": {"precision": "bf16-mixed"}}
    (sentence,) = _why_they_differ(differ)
    assert "decides from the hardware alone" in sentence and "precision='32-true'" in sentence
    assert _why_they_differ({"recommendation": {"precision": "bf16-mixed"}, "auto": {"precision": "bf16-mixed"}}) == []
