"""mxfp8-mixed and int8-mixed for real on the CPU: MXFP8 through torchao's emulated recipe, int8 through
``torch._int_mm``; the conformance kit, training, dtypes, layer selection, checkpoints and options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import prec
from prec.testing import check_precision, precision_pairs
from prec_torchao import Int8MixedPrecision, Int8TrainingLinear, MXFP8MixedPrecision, MXFP8TrainingLinear

classifier = load_module(Path(__file__).with_name("classifier.py"), "_prec_torchao_tests_classifier")
Classifier, WIDTH = classifier.Classifier, classifier.WIDTH

EMULATE = {"mxfp8-mixed": {"emulate": True}, "int8-mixed": {}}
LAYERS = {"mxfp8-mixed": MXFP8TrainingLinear, "int8-mixed": Int8TrainingLinear}
CONVERTED = ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]
NAMES = ["mxfp8-mixed", "int8-mixed"]


def data(batches: int = 6) -> classifier.Batches:
    """Batches of 24 rows: not a multiple of MXFP8's 32, so the MXFP8 layers pad every one."""
    return classifier.data(batches, batch_size=24)


def converted(model: torch.nn.Module, name: str) -> list[str]:
    return [key for key, layer in model.named_modules() if isinstance(layer, LAYERS[name])]


def fit(name: str, model: Classifier | None = None, **kwargs: Any) -> tuple[prec.Trainer, Classifier]:
    model = model or Classifier()
    options = {**EMULATE[name], **kwargs.pop("options", {})}
    trainer = prec.Trainer(
        accelerator="cpu", precision=name, precision_options=options, enable_progress_bar=False, **kwargs
    )
    trainer.fit(model, data())
    return trainer, model


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize("name", NAMES)
def test_conformance_on_cpu(name: str) -> None:
    check_precision(name, "cpu", options=EMULATE[name])


def test_the_pairs_are_registered_with_what_they_need() -> None:
    from prec.cli.app import collect

    assert {(name, "cpu") for name in NAMES} <= set(precision_pairs("cpu"))
    rows = {(row["name"], row["accelerator"]): row for row in collect()["precisions"]}
    for name in NAMES:
        for accelerator in ("cpu", "cuda"):
            row = rows[(name, accelerator)]
            assert row["distribution"] == "prec-torchao" and "unavailable" not in row["description"], row
    assert "compute capability 10.0+" in rows[("mxfp8-mixed", "cuda")]["description"]
    assert "emulated" in rows[("mxfp8-mixed", "cpu")]["description"]


@pytest.mark.parametrize(("name", "cls"), [("mxfp8-mixed", MXFP8MixedPrecision), ("int8-mixed", Int8MixedPrecision)])
def test_trainer_trains_with_converted_layers(name: str, cls: type) -> None:
    trainer, model = fit(name, max_epochs=3, limit_val_batches=2)
    assert type(trainer.precision_plugin) is cls and trainer.precision == name
    assert converted(model, name) == CONVERTED and type(model.head) is torch.nn.Linear
    assert trainer.precision_plugin.emulated is (name == "mxfp8-mixed")
    first, last = sum(model.losses[:6]) / 6, sum(model.losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("name", NAMES)
def test_dtypes_of_weights_outputs_gradients_and_optimizer_state(name: str) -> None:
    precision = prec.get_precision(name, "cpu", **EMULATE[name])
    model = precision.convert_module(Classifier())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    outputs: list[torch.dtype] = []
    model.blocks[0][0].register_forward_hook(lambda module, args, output: outputs.append(output.dtype))
    x, y = data(1)[0]
    with precision.forward_context():
        output = model(precision.convert_input(x))
    precision.backward(torch.nn.functional.cross_entropy(precision.convert_output(output), y), model)
    precision.optimizer_step(optimizer)
    assert outputs == [torch.bfloat16] and output.dtype == torch.bfloat16
    for parameter in model.parameters():
        assert parameter.dtype == parameter.grad.dtype == torch.float32
        assert optimizer.state[parameter]["exp_avg"].dtype == torch.float32


def test_the_mxfp8_layer_is_torchaos_mxfp8_linear_with_any_number_of_rows() -> None:
    """Same numbers as torchao's MXFP8Linear (bfloat16 weights, 32 rows); 24 rows give the first 24 of 32 rows
    padded with zeros, and the same weight gradient: a zero row changes no MX block's scale."""
    from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear
    from torchao.quantization.quantize_.common import KernelPreference

    layer = prec.get_precision("mxfp8-mixed", "cpu", emulate=True, convert_head=True).convert_module(
        torch.nn.Sequential(torch.nn.Linear(64, 32))
    )[0]
    reference = MXFP8Linear(64, 32, kernel_preference=KernelPreference.EMULATED, dtype=torch.bfloat16)
    reference.load_state_dict({key: value.to(torch.bfloat16) for key, value in layer.state_dict().items()})
    x = torch.randn(32, 64, dtype=torch.bfloat16)
    assert torch.equal(layer(x), reference(x))

    short = x[:24].clone().requires_grad_()
    layer(short).float().square().sum().backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    padded = torch.cat([x[:24], torch.zeros(8, 64, dtype=torch.bfloat16)]).requires_grad_()
    out = layer(padded)
    assert torch.equal(out[:24], layer(short))
    out[:24].float().square().sum().backward()
    assert torch.equal(layer.weight.grad, grad)


def test_the_int8_layer_is_torchaos_int8_mixed_precision_linear_in_bfloat16() -> None:
    from torchao.prototype.quantized_training import Int8MixedPrecisionTrainingConfig, Int8MixedPrecisionTrainingLinear

    precision = prec.get_precision("int8-mixed", "cpu", convert_head=True)
    layer = precision.convert_module(torch.nn.Sequential(torch.nn.Linear(64, 32)))[0]
    config = Int8MixedPrecisionTrainingConfig()
    reference = Int8MixedPrecisionTrainingLinear(64, 32, config=config, dtype=torch.bfloat16)
    reference.load_state_dict({key: value.to(torch.bfloat16) for key, value in layer.state_dict().items()})
    x = torch.randn(20, 64)
    with precision.forward_context():
        output = layer(x)
    assert output.dtype == torch.bfloat16 and torch.equal(output, reference(x.to(torch.bfloat16)))
    bf16 = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
    assert not torch.equal(output, bf16)  # the int8 rounding applies
    assert (output - bf16).float().norm() < 0.05 * bf16.float().norm()


@pytest.mark.parametrize(
    ("name", "width", "kept"),
    [("mxfp8-mixed", 48, "48x64 is not a multiple of 32"), ("int8-mixed", 20, "20x64 is not a multiple of 8")],
)
def test_layers_the_format_cannot_take_are_kept_with_the_reason(name: str, width: int, kept: str) -> None:
    precision = prec.get_precision(name, "cpu", convert_head=True, **EMULATE[name])
    precision.convert_module(torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.Linear(64, 32)))
    assert precision.conversion.converted == ["1"]
    assert precision.conversion.skipped["0"].startswith(kept)
    assert kept in precision.conversion.summary()


def _takes_the_width(module: torch.nn.Module, name: str) -> bool:
    return module.in_features == WIDTH


@pytest.mark.parametrize(
    ("options", "layers"),
    [({"skip": ["blocks.1.*"]}, CONVERTED[:2]), ({"module_filter": _takes_the_width}, ["blocks.0.0", "blocks.1.0"])],
)
@pytest.mark.parametrize("name", NAMES)
def test_filter_options(name: str, options: dict[str, Any], layers: list[str]) -> None:
    precision = prec.get_precision(name, "cpu", **EMULATE[name], **options)
    model = precision.convert_module(precision.convert_module(Classifier()))
    assert converted(model, name) == layers == precision.conversion.converted


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_load_into_plain_linear_models_and_back(tmp_path, name: str) -> None:
    trainer, low = fit(name, max_epochs=1)
    trainer.save_checkpoint(tmp_path / "low.ckpt")
    saved = weights(low)
    plain = Classifier()
    prec.Trainer(accelerator="cpu", precision="32-true", enable_progress_bar=False).validate(
        plain, data(1), ckpt_path=tmp_path / "low.ckpt"
    )
    assert not converted(plain, name) and weights(plain).keys() == saved.keys()
    assert all(torch.equal(weights(plain)[key], saved[key]) for key in saved)

    resumed = prec.Trainer(accelerator="cpu", precision="32-true", max_epochs=2, enable_progress_bar=False)
    resumed.fit(plain, data(), ckpt_path=tmp_path / "low.ckpt")
    resumed.save_checkpoint(tmp_path / "plain.ckpt")
    again = Classifier()
    back = prec.Trainer(
        accelerator="cpu", precision=name, precision_options=EMULATE[name], max_epochs=3, enable_progress_bar=False
    )
    back.validate(again, data(1), ckpt_path=tmp_path / "plain.ckpt")
    assert converted(again, name) == CONVERTED
    assert all(torch.equal(value, weights(plain)[key]) for key, value in weights(again).items())
    back.fit(again, data(), ckpt_path=tmp_path / "plain.ckpt")
    assert back.current_epoch == 3 and converted(again, name) == CONVERTED
