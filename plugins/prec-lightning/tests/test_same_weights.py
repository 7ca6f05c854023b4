"""The same script trained by Lightning's Trainer with prec_lightning.Precision and by prec.Trainer ends with the
same weights, bit for bit: every call reaches the prec precision in the same order under both loops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import prec_lightning

script = load_module(Path(__file__).with_name("lightning_script.py"), "_prec_lightning_script")
LitNet, PrecNet, loader, weights = script.LitNet, script.PrecNet, script.loader, script.weights
lightning_trainer, prec_trainer, assert_bitwise_equal = (
    script.lightning_trainer,
    script.prec_trainer,
    script.assert_bitwise_equal,
)
CASES = [
    ("32-true", {}),
    ("bf16-mixed", {}),
    ("bf16-true", {}),
    ("bf16-true", {"master_weights": "fp32"}),
    ("bf16-true", {"master_weights": "kahan"}),
    ("bf16-true", {"master_weights": "stochastic"}),
]


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(
    ("precision", "options"), CASES, ids=[f"{p}-{o.get('master_weights', 'plain')}" for p, o in CASES]
)
def test_lightning_and_prec_give_the_same_weights(precision: str, options: dict[str, Any]) -> None:
    plugin = prec_lightning.Precision(precision, "cpu", **options)
    lit = LitNet()
    lightning_trainer(plugin, max_epochs=2).fit(lit, loader())
    net = PrecNet()
    trainer = prec_trainer(precision, max_epochs=2, precision_options=options)
    trainer.fit(net, loader())

    assert_bitwise_equal(weights(lit), weights(net))
    initial = script.build_layers().state_dict()
    assert not torch.equal(lit.state_dict()["layers.0.weight"].float(), initial["0.weight"].float()), "nothing trained"
    if "master_weights" in options:  # what training kept beyond the 16-bit weights is the same too
        for (name, mine), theirs in zip(lit.named_parameters(), net.parameters(), strict=True):
            got = plugin.prec_precision.effective_weight(mine)
            expected = trainer.precision_plugin.effective_weight(theirs)
            assert torch.equal(got, expected), name


@pytest.mark.usefixtures("quiet")
def test_gradient_clipping_and_hooks_keep_the_weights_identical() -> None:
    """Clipping runs on the float32 copies (fp32 master weights) in both loops; an on_before_optimizer_step hook
    sees the same gradients."""
    seen: dict[str, list[float]] = {"lightning": [], "prec": []}

    class ClippedLit(LitNet):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            seen["lightning"].append(
                float(sum(p.grad.float().norm() ** 2 for g in optimizer.param_groups for p in g["params"]))
            )

    class ClippedPrec(PrecNet):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            seen["prec"].append(
                float(sum(p.grad.float().norm() ** 2 for g in optimizer.param_groups for p in g["params"]))
            )

    options = {"master_weights": "fp32"}
    lit = ClippedLit()
    plugin = prec_lightning.Precision("bf16-true", "cpu", **options)
    lightning_trainer(plugin, gradient_clip_val=0.05).fit(lit, loader())
    net = ClippedPrec()
    prec_trainer("bf16-true", gradient_clip_val=0.05, precision_options=options).fit(net, loader())
    assert_bitwise_equal(weights(lit), weights(net))
    assert seen["lightning"] == seen["prec"] and len(seen["prec"]) == 4


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_a_third_party_precision_with_a_grad_scaler_gives_the_same_weights() -> None:
    """16-mixed on the CPU from a plugin registered in code: loss scaling, unscaling before clipping, update."""
    lit = LitNet()
    plugin = prec_lightning.Precision("16-mixed", "cpu", init_scale=2.0**10)
    lightning_trainer(plugin, gradient_clip_val=1.0).fit(lit, loader())
    net = PrecNet()
    trainer = prec_trainer("16-mixed", gradient_clip_val=1.0, precision_options={"init_scale": 2.0**10})
    trainer.fit(net, loader())
    assert_bitwise_equal(weights(lit), weights(net))
    assert plugin.loss_scale == trainer.precision_plugin.scaler.get_scale() == 2.0**10


@pytest.mark.usefixtures("quiet")
def test_keep_float32_modules_stay_float32_under_lightning() -> None:
    options = {"keep_float32": [torch.nn.LayerNorm]}
    lit = LitNet()
    lightning_trainer(prec_lightning.Precision("bf16-true", "cpu", **options)).fit(lit, loader())
    net = PrecNet()
    prec_trainer("bf16-true", precision_options=options).fit(net, loader())
    dtypes = {name: tensor.dtype for name, tensor in lit.state_dict().items()}
    assert dtypes["layers.1.weight"] == torch.float32 and dtypes["layers.0.weight"] == torch.bfloat16
    assert_bitwise_equal(weights(lit), weights(net))
