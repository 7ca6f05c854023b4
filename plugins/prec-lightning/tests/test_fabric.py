"""Fabric with prec_lightning.FabricPrecision: set up a model, train a few steps, and get exactly what prec's own
loop (the one in ``prec.precision.base``'s docstring) gets with the same precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from lightning.fabric import Fabric
from torch import nn

import prec
import prec_lightning

script = load_module(Path(__file__).with_name("lightning_script.py"), "_prec_lightning_script")


def fabric_run(
    plugin: prec_lightning.FabricPrecision, *, clip: float | None = None, poison: int | None = None
) -> nn.Module:
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[plugin])
    layers = script.build_layers()
    model, optimizer = fabric.setup(layers, script.configure(layers.parameters()))
    for x, y in fabric.setup_dataloaders(script.loader(poison), move_to_device=True):
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        if clip is not None:
            # Fabric raises on a non-finite norm by default; under a grad scaler an overflow is the scaler's to skip
            fabric.clip_gradients(model, optimizer, max_norm=clip, error_if_nonfinite=False)
        optimizer.step()
        optimizer.zero_grad()
    plugin.teardown()
    return layers


def own_loop(precision: prec.Precision, *, clip: float | None = None) -> nn.Module:
    """What a Fabric set-up module does per step (convert the input, forward in the context, convert the output),
    written against prec's API alone."""
    layers = script.build_layers()
    model = precision.convert_module(layers)
    precision.setup_module(model)
    optimizer = script.configure(model.parameters())
    precision.setup_optimizer(optimizer)
    for x, y in script.loader():
        with precision.forward_context():
            output = model(precision.convert_input(x))
        loss = nn.functional.mse_loss(precision.convert_output(output), y)
        precision.backward(loss, model)
        if clip is not None:
            precision.clip_gradients(optimizer, clip)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    return layers


CASES = [
    ("32-true", {}),
    ("bf16-mixed", {}),
    ("bf16-true", {"master_weights": "kahan"}),
    ("bf16-true", {"master_weights": "fp32"}),
]


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{p}-{o.get('master_weights', 'plain')}" for p, o in CASES])
def test_fabric_trains_as_prec_does(name: str, options: dict[str, Any]) -> None:
    plugin = prec_lightning.FabricPrecision(name, "cpu", **options)
    trained = fabric_run(plugin, clip=0.5)
    expected = own_loop(prec.get_precision(name, "cpu", **options), clip=0.5)
    script.assert_bitwise_equal(script.weights(trained), script.weights(expected))
    assert not torch.equal(trained[0].weight.float(), script.build_layers()[0].weight)
    assert trained[0].weight.dtype == plugin.prec_precision.param_dtype


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_fabric_with_a_grad_scaler_skips_overflow_and_backs_off() -> None:
    plugin = prec_lightning.FabricPrecision("16-mixed", "cpu", init_scale=2.0**20, growth_interval=2)
    trained = fabric_run(plugin, clip=1.0)
    expected = own_loop(prec.get_precision("16-mixed", "cpu", init_scale=2.0**20, growth_interval=2), clip=1.0)
    script.assert_bitwise_equal(script.weights(trained), script.weights(expected))
    assert plugin.skipped_steps >= 1
    assert plugin.loss_scale is not None and plugin.loss_scale < 2.0**20
    assert set(plugin.metrics()) == {"loss_scale", "skipped_steps"}
    assert "scaler" in plugin.state_dict()["state"]


@pytest.mark.usefixtures("quiet")
def test_fabric_guards_nonfinite_gradients() -> None:
    plugin = prec_lightning.FabricPrecision("bf16-true", "cpu")
    with pytest.warns(prec.PrecWarning, match="non-finite"):
        trained = fabric_run(plugin, poison=1)
    assert plugin.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trained.parameters())


def test_fabric_init_module_builds_in_the_precision_dtype() -> None:
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[prec_lightning.FabricPrecision("bf16-true", "cpu")])
    with fabric.init_module():
        layer = nn.Linear(4, 4)
    assert layer.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
