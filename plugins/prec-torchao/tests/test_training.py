"""fp8 training for real on the CPU: torchao's emulation runs the fp8 casts and scaled matmuls of Float8Linear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from torchao.float8.float8_linear import Float8Linear

import prec
from prec_torchao import Float8MixedPrecision, Float8TruePrecision
from prec_torchao.float8_cpu import CpuAutocastFloat8Linear

classifier = load_module(Path(__file__).with_name("classifier.py"), "_prec_torchao_tests_classifier")
Classifier, WIDTH = classifier.Classifier, classifier.WIDTH


def data(batches: int = 8) -> classifier.Batches:
    return classifier.data(batches, batch_size=16)


EMULATE = {"emulate": True}
CONVERTED = ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]


def fit(precision: str, options: dict[str, Any] | None = None, **kwargs: Any) -> tuple[prec.Trainer, Classifier]:
    model = kwargs.pop("model", None) or Classifier()
    trainer = prec.Trainer(
        accelerator="cpu",
        precision=precision,
        precision_options={**EMULATE, **(options or {})},
        max_epochs=kwargs.pop("max_epochs", 3),
        enable_progress_bar=False,
        **kwargs,
    )
    trainer.fit(model, data())
    return trainer, model


def float8_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, layer in model.named_modules() if isinstance(layer, Float8Linear)]


@pytest.mark.parametrize(("name", "cls"), [("fp8-mixed", Float8MixedPrecision), ("fp8-bf16-true", Float8TruePrecision)])
def test_trainer_trains_with_float8_linear_layers(name: str, cls: type) -> None:
    trainer, model = fit(name)
    assert isinstance(trainer.precision_plugin, cls) and trainer.precision == name
    assert float8_layers(model) == CONVERTED  # the head (32x4) stays a plain Linear
    assert type(model.head) is torch.nn.Linear
    assert trainer.precision_plugin.conversion.fraction == 0.8
    first, last = sum(model.losses[:8]) / 8, sum(model.losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize(
    ("name", "weights", "inputs"),
    [("fp8-mixed", torch.float32, torch.bfloat16), ("fp8-bf16-true", torch.bfloat16, None)],
)
def test_dtypes_of_weights_matmul_inputs_gradients_and_optimizer_state(
    name: str, weights: torch.dtype, inputs: torch.dtype | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = prec.get_precision(name, "cpu", **EMULATE)
    model = precision.convert_module(Classifier())
    seen: dict[str, torch.dtype] = {}
    forward = Float8Linear.forward

    def record(layer: Float8Linear, input: torch.Tensor) -> torch.Tensor:
        seen["input"] = input.dtype  # what torchao's own forward receives, inside prec's CPU autocast handling
        return forward(layer, input)

    monkeypatch.setattr(Float8Linear, "forward", record)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data(1)[0]
    with precision.forward_context():
        output = model(precision.convert_input(x))
    precision.backward(torch.nn.functional.cross_entropy(precision.convert_output(output), y), model)
    precision.optimizer_step(optimizer)
    assert seen["input"] == (inputs or weights)  # what Float8Linear casts to float8 (e4m3)
    assert output.dtype == torch.bfloat16
    for parameter in model.parameters():
        assert parameter.dtype == parameter.grad.dtype == weights
        state = optimizer.state[parameter]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == weights


def test_fp8_numerics_really_apply() -> None:
    """Converted layers round through float8: close to, but not equal to, the bf16-mixed result."""
    x = data(1)[0][0]
    outputs = {}
    for name in ("bf16-mixed", "fp8-mixed"):
        precision = prec.get_precision(name, "cpu", **(EMULATE if name == "fp8-mixed" else {}))
        model = precision.convert_module(Classifier())
        with torch.no_grad(), precision.forward_context():
            outputs[name] = model(x).float()
    error = (outputs["fp8-mixed"] - outputs["bf16-mixed"]).norm() / outputs["bf16-mixed"].norm()
    assert 1e-3 < error < 0.1, error.item()


def test_configure_model_and_init_module_are_converted_after_they_are_built() -> None:
    trainer, model = fit("fp8-mixed", model=Classifier(build_in_configure_model=True), max_epochs=1)
    assert float8_layers(model) == CONVERTED
    trainer = prec.Trainer(accelerator="cpu", precision="fp8-bf16-true", precision_options=EMULATE)
    with trainer.init_module():
        model = Classifier()
    assert model.head.weight.dtype == torch.bfloat16 and not float8_layers(model)
    trainer = prec.Trainer(accelerator="cpu", precision="fp8-bf16-true", precision_options=EMULATE, max_steps=2)
    trainer.fit(model, data(2))
    assert float8_layers(model) == CONVERTED


def test_converting_twice_adds_nothing() -> None:
    precision = prec.get_precision("fp8-mixed", "cpu", **EMULATE)
    model = precision.convert_module(precision.convert_module(Classifier()))
    assert float8_layers(model) == CONVERTED
    assert all(type(model.get_submodule(name)) is CpuAutocastFloat8Linear for name in CONVERTED)
    assert not any(model.get_submodule(name)._forward_hooks for name in CONVERTED)


@pytest.mark.parametrize(
    ("options", "converted"),
    [
        ({"convert_head": True}, CONVERTED),  # the head is 32x4: 4 is not a multiple of 16, so it still stays
        ({"skip": ["blocks.1.*"]}, CONVERTED[:2]),
        ({"module_filter": lambda module, name: module.in_features == WIDTH}, ["blocks.0.0", "blocks.1.0"]),
        ({"recipe": "rowwise"}, CONVERTED),
    ],
)
def test_filter_and_recipe_options(options: dict[str, Any], converted: list[str]) -> None:
    precision = prec.get_precision("fp8-mixed", "cpu", **EMULATE, **options)
    model = precision.convert_module(Classifier())
    assert float8_layers(model) == converted
    assert precision.conversion.converted == converted


def test_convert_head_converts_a_head_fp8_can_take() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    kept = prec.get_precision("fp8-mixed", "cpu", **EMULATE).convert_module(model)
    assert float8_layers(kept) == ["0"]
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    both = prec.get_precision("fp8-mixed", "cpu", convert_head=True, **EMULATE).convert_module(model)
    assert float8_layers(both) == ["0", "2"]


def test_rowwise_recipe_trains() -> None:
    _, model = fit("fp8-bf16-true", {"recipe": "rowwise"}, max_epochs=2)
    assert float8_layers(model) == CONVERTED and model.losses[-1] < model.losses[0]


def test_cpu_without_the_emulate_option_warns_that_it_is_an_emulation() -> None:
    with pytest.warns(prec.PerformanceWarning, match="emulates fp8 matmuls"):
        prec.Trainer(accelerator="cpu", precision="fp8-mixed")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"recipe": "blockwise"}, "recipe='blockwise' must be one of 'tensorwise', 'rowwise'"),
        ({"recipy": "rowwise"}, "Did you mean 'recipe'"),
        ({"skip": "head"}, "skip='head' must be a list of module-name patterns"),
        ({"emulate": False}, "emulate=False needs fp8 kernels, which only run on a CUDA GPU"),
        ({"module_filter": lambda m, n: True, "convert_head": True}, "module_filter replaces skip and convert_head"),
        ({"fsdp_float8_all_gather": True, "recipe": "rowwise"}, "needs recipe='tensorwise'"),
        ({"scaler": True}, "unknown option"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.Trainer(accelerator="cpu", precision="fp8-mixed", precision_options={**EMULATE, **options})


def test_prec_list_names_the_distribution() -> None:
    from prec.cli.app import collect

    rows = {(row["name"], row["accelerator"]): row for row in collect()["precisions"]}
    for key in [("fp8-mixed", "cpu"), ("fp8-bf16-true", "cpu"), ("fp8-mixed", "cuda"), ("fp8-bf16-true", "cuda")]:
        assert rows[key]["distribution"] == "prec-torchao", rows[key]
        assert "torchao" in rows[key]["description"] and "unavailable" not in rows[key]["description"]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", ["fp8-mixed", "fp8-bf16-true"])
def test_checkpoints_load_into_plain_linear_models_and_back(tmp_path, name: str) -> None:
    trainer, fp8_model = fit(name, max_epochs=1)
    trainer.save_checkpoint(tmp_path / "fp8.ckpt")
    saved = weights(fp8_model)
    assert float8_layers(fp8_model)

    # into a plain model at 32-true: the same keys, the exact weights (cast from bfloat16 under fp8-bf16-true)
    plain = Classifier()
    tester = prec.Trainer(accelerator="cpu", precision="32-true", enable_progress_bar=False)
    tester.validate(plain, data(1), ckpt_path=tmp_path / "fp8.ckpt")
    assert not float8_layers(plain)
    loaded = weights(plain)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key].float()) for key in saved)

    # resume training at 32-true from the fp8 checkpoint, then back into fp8 from the 32-true one
    resumed = prec.Trainer(accelerator="cpu", precision="32-true", max_epochs=2, enable_progress_bar=False)
    resumed.fit(plain, data(), ckpt_path=tmp_path / "fp8.ckpt")
    resumed.save_checkpoint(tmp_path / "plain.ckpt")
    again = Classifier()
    trainer = prec.Trainer(
        accelerator="cpu", precision=name, precision_options=EMULATE, max_epochs=3, enable_progress_bar=False
    )
    trainer.validate(again, data(1), ckpt_path=tmp_path / "plain.ckpt")
    assert float8_layers(again) == CONVERTED
    expected = weights(plain)
    assert all(
        torch.equal(value.float(), expected[key].to(value.dtype).float()) for key, value in weights(again).items()
    )
    trainer.fit(again, data(), ckpt_path=tmp_path / "plain.ckpt")
    assert trainer.current_epoch == 3 and float8_layers(again) == CONVERTED


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_evaluation_modes_and_exceptions_leave_autocast_as_it_was(mode: Any) -> None:
    precision = prec.get_precision("fp8-mixed", "cpu", **EMULATE)
    model = precision.convert_module(Classifier())
    x = data(1)[0][0]
    with mode(), precision.forward_context():
        assert model(x).dtype == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 3))  # the wrong width raises inside a Float8Linear's forward
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
