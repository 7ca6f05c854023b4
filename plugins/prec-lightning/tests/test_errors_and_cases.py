"""Bad input is prec's clear error, raised where the plugin is built; the cases around the common path (manual
optimization, LBFGS, a precision instance of your own, a module that overrides backward) run or refuse clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module
from lightning.fabric import Fabric
from torch import Tensor, nn
from typing_extensions import override

import prec
import prec_lightning

script = load_module(Path(__file__).with_name("lightning_script.py"), "_prec_lightning_script")
PLUGINS = [prec_lightning.Precision, prec_lightning.FabricPrecision]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_unknown_precision_fails_when_the_plugin_is_built(plugin: type) -> None:
    with pytest.raises(prec.UnknownPrecisionError, match="'bf17-mixed' is not a precision name"):
        plugin("bf17-mixed", "cpu")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_unsupported_pair_fails_when_the_plugin_is_built(plugin: type) -> None:
    with pytest.raises(prec.UnsupportedPrecisionError, match="'16-mixed' is not supported on accelerator 'cpu'"):
        plugin("16-mixed", "cpu")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("bf16-true", "cpu"), {"master_weight": "kahan"}, "Did you mean 'master_weights'"),
        (("bf16-true", "cpu"), {"master_weights": "kahn"}, "master_weights"),
        (("bf16-true", "cpu"), {"nonfinite": "ignore"}, "nonfinite='ignore' must be one of"),
        ((prec.get_precision("bf16-true", "cpu"), "cpu"), {"master_weights": "fp32"}, "built already"),
        (("bf16-true", "cpu"), {"log_metrics": "yes"}, "log_metrics='yes' must be True or False"),
        (([16], "cpu"), {}, "precision"),
    ],
)
def test_bad_arguments_are_configuration_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=message):
        prec_lightning.Precision(*args, **kwargs)


@pytest.mark.usefixtures("quiet")
def test_a_precision_built_for_another_device_is_refused_before_training() -> None:
    """A cuda autocast would do nothing to CPU tensors: refused, not run as 32-bit math."""
    for_cuda = prec.MixedPrecision("bf16-mixed", "cuda", torch.bfloat16)
    trainer = script.lightning_trainer(prec_lightning.Precision(for_cuda))
    with pytest.raises(prec.ConfigurationError, match="accelerator='cpu'"):
        trainer.fit(script.LitNet(), script.loader())
    assert trainer.global_step == 0

    fabric = Fabric(accelerator="cpu", devices=1, plugins=[prec_lightning.FabricPrecision(for_cuda)])
    model = fabric.setup(script.build_layers())
    with pytest.warns(UserWarning, match="CUDA"), pytest.raises(prec.ConfigurationError, match="accelerator='cpu'"):
        fabric.backward(model(torch.randn(2, 16)).sum())


class Noisy(prec.Precision):
    """A precision of one's own: 32-true that counts its optimizer steps."""

    def __init__(self) -> None:
        self.steps = 0

    @override
    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any = None, **kwargs: Any) -> Any:
        self.steps += 1
        return super().optimizer_step(optimizer, closure, **kwargs)


@pytest.mark.usefixtures("quiet")
def test_a_precision_instance_of_your_own_runs_in_lightning() -> None:
    mine = Noisy()
    plugin = prec_lightning.Precision(mine, nonfinite="raise")
    assert plugin.precision == "32-true" and mine.guard.policy.mode == "raise"
    script.lightning_trainer(plugin).fit(script.LitNet(), script.loader())
    assert mine.steps == script.BATCHES


class ManualLit(script.LitNet):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        self.manual_backward(script.step_loss(self.layers, batch))
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
@pytest.mark.parametrize(
    ("name", "options"), [("bf16-true", {}), ("16-mixed", {}), ("bf16-true", {"master_weights": "kahan"})]
)
def test_manual_optimization_gives_the_same_weights(name: str, options: dict[str, Any]) -> None:
    """Manual steps (``optimizer.step()`` inside ``training_step``) equal prec's automatic optimization: one step
    per batch either way, run under the run's default dtype, not the step context's bfloat16."""
    lit = ManualLit()
    script.lightning_trainer(prec_lightning.Precision(name, "cpu", **options)).fit(lit, script.loader())
    net = script.PrecNet()
    script.prec_trainer(name, precision_options=options).fit(net, script.loader())
    script.assert_bitwise_equal(script.weights(lit), script.weights(net))


class LbfgsLit(script.LitNet):
    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)


@pytest.mark.usefixtures("quiet")
def test_lbfgs_steps_through_its_closure() -> None:
    module = LbfgsLit()
    before = script.weights(module)
    trainer = script.lightning_trainer(prec_lightning.Precision("32-true", "cpu"))
    trainer.fit(module, script.loader())
    assert not torch.equal(script.weights(module)["layers.0.weight"], before["layers.0.weight"])
    assert trainer.global_step == script.BATCHES


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_lbfgs_under_a_grad_scaler_is_refused_before_training() -> None:
    trainer = script.lightning_trainer(prec_lightning.Precision("16-mixed", "cpu"))
    with pytest.raises(prec.ConfigurationError, match="LBFGS"):
        trainer.fit(LbfgsLit(), script.loader())


class OwnBackward(script.LitNet):
    calls = 0

    @override
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        type(self).calls += 1
        loss.backward(*args, **kwargs)


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_an_overridden_backward_runs_or_is_refused() -> None:
    """Kept where prec's backward is the plain one; refused where prec scales the loss (it would be bypassed)."""
    script.lightning_trainer(prec_lightning.Precision("bf16-true", "cpu")).fit(OwnBackward(), script.loader())
    assert OwnBackward.calls == script.BATCHES
    trainer = script.lightning_trainer(prec_lightning.Precision("16-mixed", "cpu"))
    with pytest.raises(prec.ConfigurationError, match="overrides LightningModule.backward"):
        trainer.fit(OwnBackward(), script.loader())


def test_fp8_from_prec_torchao_trains_in_lightning() -> None:
    """A precision another package registers (prec-torchao's fp8, emulated on the CPU) with its own options."""
    registry = prec.get_registry()
    info = registry.plugins.get("torchao")
    if info is None or info.status != "ok":
        pytest.skip(f"prec-torchao is not usable here: {info.status if info else 'not installed'}")
    plugin = prec_lightning.Precision("fp8-mixed", "cpu", emulate=True, convert_head=False)
    module = script.LitNet()
    script.lightning_trainer(plugin).fit(module, script.loader())
    from torchao.float8.float8_linear import Float8Linear

    assert isinstance(module.layers[3], Float8Linear) and not isinstance(module.layers[5], Float8Linear)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_importing_the_package_registers_nothing_in_prec() -> None:
    names = {info.distribution for info in prec.get_registry().plugins.values()}
    assert "prec-lightning" not in names
    assert isinstance(prec_lightning.Precision("32-true", "cpu"), prec_lightning.Precision)
    assert nn.Module  # the public names are these two
    assert prec_lightning.__all__ == ["FabricPrecision", "Precision"]
