from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from _modules import load_module

import prec
from prec.numerics import SCHEMA_VERSION, Plan, Thresholds, make_plan, measure, plot_heatmap
from prec.numerics.plan import Decision, MasterWeightsDecision, exact_pattern

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


def _adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr)


def test_bf16_true_with_adamw_at_lr_1e_4_asks_for_kahan_master_weights_and_says_why() -> None:
    batch = models.batch(16, 4)
    measured = measure(models.WithNorms(), batch, models.mse, precision="bf16-true", optimizer=_adamw(1e-4))
    assert measured.layers["norm"].lost_update["bf16"]["weight"] > 0.99
    plan = make_plan(measured, "bf16-true")
    assert plan.master_weights is not None and plan.master_weights.mode == "kahan"
    assert "norm.weight (100.00%)" in plan.master_weights.reason or "norm.weight (99." in plan.master_weights.reason
    assert "AdamW" in plan.master_weights.reason and "compensation" in plan.master_weights.reason
    assert plan.precision_options() == {"master_weights": "kahan"}
    assert plan.keep_float32 == ()


def test_a_learning_rate_bf16_can_hold_needs_no_master_weights() -> None:
    batch = models.batch(16, 4)
    measured = measure(models.WithNorms(), batch, models.mse, precision="bf16-true", optimizer=_adamw(3e-2))
    plan = make_plan(measured, "bf16-true")
    assert plan.master_weights is None, plan.lines()


def test_16_true_asks_for_fp32_master_weights() -> None:
    batch = models.batch(16, 4)
    measured = measure(models.WithNorms(), batch, models.mse, ["fp16"], precision="16-true", optimizer=_adamw(1e-4))
    plan = make_plan(measured, "16-true")
    assert plan.master_weights is not None and plan.master_weights.mode == "fp32"


def test_the_layer_with_outlier_inputs_is_the_worst_in_e4m3_and_stays_out_of_fp8() -> None:
    measured = measure(models.Outlier(), models.batch(16, 4), models.mse, precision="fp8-mixed")
    worst = measured.worst("e4m3")
    assert worst[0][0] == "outlier" and worst[0][1] > 0.3
    assert all(value < 0.1 for name, value in worst[1:]), worst
    plan = make_plan(measured, "fp8-mixed")
    assert [decision.module for decision in plan.fp8_exclude] == ["outlier"]
    assert "output error in e4m3" in plan.fp8_exclude[0].reason
    assert plan.precision_options() == {"skip": ["outlier"]}
    assert plan.keep_float32 == ()  # in bf16 the same layer is fine


def test_measuring_leaves_the_model_alone() -> None:
    model = models.WithNorms()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    measure(model, lambda: models.batch(16, 4), models.mse, ["bf16"], steps=2, optimizer=_adamw(1e-2))
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert all(param.grad is None for param in model.parameters())


def test_errors_are_measured_against_float64_for_fp32_and_grow_as_formats_shrink() -> None:
    measured = measure(models.WithNorms(), models.batch(16, 4), models.mse, ["fp32", "fp16", "bf16", "e4m3", "e5m2"])
    layer = measured.layers["inp"]
    errors = [layer.forward_error[fmt] for fmt in ("fp32", "fp16", "bf16", "e4m3", "e5m2")]
    assert 0 < errors[0] < 1e-6 and errors == sorted(errors)
    assert layer.matmul_size == 16 * 32 and measured.layers["norm"].matmul_size == 0
    assert json.loads(json.dumps(measured.to_dict()))["layers"]["inp"]["type"] == "Linear"


def test_the_reference_precisions_need_nothing() -> None:
    measured = measure(models.WithNorms(), models.batch(16, 4), models.mse, ["fp32"])
    plan = make_plan(measured, "32-true")
    assert plan.precision_options() == {} and "reference" in plan.notes[0]


def test_a_plan_needs_its_formats_measured() -> None:
    measured = measure(models.WithNorms(), models.batch(16, 4), models.mse, ["bf16"])
    with pytest.raises(prec.ConfigurationError, match=r"needs the formats fp16.*precision='16-mixed'"):
        make_plan(measured, "16-mixed")
    plan = make_plan(measured, "bf16-true")
    assert "not measured" in plan.notes[0]  # no optimizer given: the plan says what it could not judge
    with pytest.raises(prec.ConfigurationError, match="precision='fp4'"):
        make_plan(measured, "fp4")


def test_thresholds_are_named_and_stored() -> None:
    measured = measure(models.Outlier(), models.batch(16, 4), models.mse, precision="fp8-mixed")
    plan = make_plan(measured, "fp8-mixed", thresholds=Thresholds(fp8_min_matmul_size=600))
    assert {decision.module for decision in plan.fp8_exclude} == {"outlier", "first", "last"}
    assert "fp8_min_matmul_size=600" in dict((d.module, d.reason) for d in plan.fp8_exclude)["last"]
    assert plan.thresholds["fp8_min_matmul_size"] == 600 and plan.thresholds["max_error_16"] == 0.02


def _plan() -> Plan:
    return Plan(
        precision="bf16-true",
        keep_float32=(Decision("blocks.0.norm", "its output error in bf16 is 3.00% > 2.00%"),),
        fp8_exclude=(),
        master_weights=MasterWeightsDecision("kahan", "norm.weight loses its update"),
        notes=("a note",),
        thresholds={"max_error_16": 0.02},
    )


def test_plans_round_trip_through_json_files(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert set(data) == {
        "schema_version",
        "precision",
        "keep_float32",
        "fp8_exclude",
        "master_weights",
        "notes",
        "thresholds",
    }
    assert Plan.load(path) == plan and Plan.from_json(plan.to_json()) == plan
    assert plan.precision_options() == {"keep_float32": ["blocks.0.norm"], "master_weights": "kahan"}
    assert any("keep_float32 blocks.0.norm: its output error" in line for line in plan.lines())


def test_loading_names_the_file_and_the_key(tmp_path: Path) -> None:
    good = _plan().to_dict()
    cases = {
        "schema_version": ({**good, "schema_version": 2}, "key 'schema_version' is 2"),
        "unknown": ({**good, "run": "rm -rf /"}, "unknown key 'run'"),
        "missing": ({k: v for k, v in good.items() if k != "notes"}, "key 'notes' is missing"),
        "mode": ({**good, "master_weights": {"mode": "magic", "reason": ""}}, "'master_weights.mode' is 'magic'"),
        "entry": ({**good, "keep_float32": [{"module": "a"}]}, "key 'keep_float32' must hold objects"),
        "type": ({**good, "keep_float32": [{"module": 3, "reason": ""}]}, "'keep_float32.module' must be a string"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(prec.ConfigurationError, match=rf"{name}\.json: .*{message}".replace("(", r"\(")):
            Plan.load(path)
    (tmp_path / "nan.json").write_text(json.dumps({**good, "thresholds": {"x": math.nan}}))
    with pytest.raises(prec.ConfigurationError, match=r"nan\.json: not a precision plan"):
        Plan.load(tmp_path / "nan.json")
    with pytest.raises(prec.ConfigurationError, match="cannot read"):
        Plan.load(tmp_path / "absent.json")


def test_module_names_become_exact_patterns() -> None:
    assert exact_pattern("layers.0") == "layers.0"
    assert exact_pattern("odd[1]*?") == "odd[[]1][*][?]"


def test_heatmap_is_written_or_explains_how_to_get_matplotlib(tmp_path: Path, monkeypatch) -> None:
    measured = measure(models.WithNorms(), models.batch(16, 4), models.mse, ["bf16", "e4m3"])
    if "matplotlib" not in sys.modules:
        pytest.importorskip("matplotlib")
    target = plot_heatmap(measured, tmp_path / "errors.png")
    assert target.read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # this machine has it; an environment without it:
    with pytest.raises(prec.ConfigurationError, match="pip install matplotlib"):
        plot_heatmap(measured, tmp_path / "again.png")
