"""``prec plan`` and ``precision_options={"plan": ...}``: output, files, and the errors a user can make."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from click.testing import CliRunner

import prec
from prec.cli.app import main
from prec.numerics import Decision, MasterWeightsDecision, Plan

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = models.WithNorms()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("seen", float(batch_idx))
        return models.mse(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("prec_plan_cli_factories")
    module.pair = lambda: (Net(), [models.batch(16, 4, size=16)])  # type: ignore[attr-defined]
    module.bare = lambda: models.WithNorms()  # type: ignore[attr-defined]
    module.one_batch = lambda: models.batch(16, 4, size=16)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def _run(*arguments: str) -> Any:
    return CliRunner().invoke(main, ["plan", *arguments])


def test_prints_a_table_of_80_columns_writes_the_plan_and_its_json(spec: str, tmp_path: Path) -> None:
    result = _run(f"{spec}:pair", "--precision", "bf16-true", "--steps", "1", "--output", str(tmp_path / "p.json"))
    assert result.exit_code == 0, result.output
    assert "master=kahan" in result.output and "net.norm.weight" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert Plan.load(tmp_path / "p.json").master_weights.mode == "kahan"  # type: ignore[union-attr]
    as_json = _run(f"{spec}:pair", "--precision", "bf16-true", "--steps", "1", "--json")
    assert json.loads(as_json.output)["schema_version"] == 1


def test_a_bare_module_with_batch_is_measured_without_an_optimizer(spec: str) -> None:
    result = _run(f"{spec}:bare", "--precision", "16-mixed", "--batch", f"{spec}:one_batch", "--steps", "1")
    assert result.exit_code == 0, result.output
    assert "no optimizer" in result.output


def test_plot_writes_a_heatmap(spec: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _run(f"{spec}:pair", "--precision", "16-mixed", "--steps", "1", "--plot", str(tmp_path / "h.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--precision", "bf16-tru"], "Did you mean 'bf16-true'"),
        (["--precision", "16-mixed", "--steps", "0"], "--steps=0"),
    ],
)
def test_usage_errors_name_the_argument(spec: str, arguments: list[str], message: str) -> None:
    result = _run(f"{spec}:pair", *arguments)
    assert result.exit_code == 2 and message in result.output


def test_a_model_without_batches_asks_for_batch(spec: str) -> None:
    result = _run(f"{spec}:bare", "--precision", "16-mixed")
    assert result.exit_code == 2 and "--batch" in result.output


# -- the plan in the Trainer -----------------------------------------------------------------------------------------
def _kahan_plan(precision: str = "bf16-true") -> Plan:
    return Plan(
        precision, keep_float32=(Decision("net.out", "why"),), master_weights=MasterWeightsDecision("kahan", "why")
    )


def test_a_plan_becomes_the_precisions_options(tmp_path: Path) -> None:
    _kahan_plan().save(tmp_path / "plan.json")
    trainer = prec.Trainer(accelerator="cpu", precision="bf16-true", precision_options={"plan": tmp_path / "plan.json"},
                           max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                           enable_checkpointing=False)  # fmt: skip
    assert trainer.precision_plugin.master_weights == "kahan"
    module = Net()
    trainer.fit(module, [models.batch(16, 4, size=16)])
    assert module.net.out.weight.dtype == torch.float32 and module.net.inp.weight.dtype == torch.bfloat16


def test_a_plan_for_another_precision_is_refused_naming_both() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"plan for 'bf16-true', but the precision is 'bf16-mixed'"):
        prec.Trainer(accelerator="cpu", precision="bf16-mixed", precision_options={"plan": _kahan_plan()})


def test_an_option_given_by_the_plan_and_explicitly_is_refused() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"'master_weights' is given both by the plan"):
        prec.Trainer(
            accelerator="cpu", precision="bf16-true",
            precision_options={"plan": _kahan_plan(), "master_weights": "fp32"},
        )  # fmt: skip


def test_auto_uses_the_plan_for_the_precision_it_resolves_to() -> None:
    resolved = prec.Trainer(accelerator="cpu", precision="auto", logger=False).precision
    other = "bf16-true" if resolved != "bf16-true" else "32-true"
    with pytest.raises(prec.ConfigurationError, match=rf"plan for '{other}', but the precision is '{resolved}'"):
        prec.Trainer(accelerator="cpu", precision="auto", precision_options={"plan": Plan(other)})
    planned = prec.Trainer(accelerator="cpu", precision="auto", precision_options={"plan": Plan(resolved)})
    assert planned.precision == resolved


@pytest.mark.parametrize("value", [3, ["plan.json"]])
def test_a_plan_that_is_neither_a_path_nor_a_plan_is_refused(value: Any) -> None:
    with pytest.raises(prec.ConfigurationError, match="plan=.* must be a path to a plan file"):
        prec.Trainer(accelerator="cpu", precision="bf16-true", precision_options={"plan": value})


def test_a_missing_plan_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(prec.ConfigurationError, match="missing.json: cannot read"):
        prec.Trainer(
            accelerator="cpu", precision="bf16-true", precision_options={"plan": str(tmp_path / "missing.json")}
        )
