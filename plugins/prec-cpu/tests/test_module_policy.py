"""keep_float32: modules that stay float32 under every precision (by type and by name pattern)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import prec
from prec.precision import NORM_TYPES, fsdp_policy_groups

pytestmark = pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.proj(x)))


def _record(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per module: the dtype of the input, of the output and whether autocast was on inside it."""
    seen: dict[str, dict[str, Any]] = {}
    for name, module in model.named_children():

        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any, name: str = name) -> None:
            seen[name] = {"out": output.dtype, "autocast": torch.is_autocast_enabled("cpu")}

        def pre(mod: torch.nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen.setdefault(f"{name}.in", {})["in"] = args[0].dtype

        module.register_forward_hook(hook)
        module.register_forward_pre_hook(pre)
    return seen


@pytest.mark.parametrize(("name", "dtype"), [("bf16-true", torch.bfloat16), ("16-true", torch.float16)])
@pytest.mark.parametrize("keep", [[torch.nn.LayerNorm, "head"], [*NORM_TYPES, "he*"]])
def test_true_precisions_keep_matched_modules_in_float32(name: str, dtype: torch.dtype, keep: list[Any]) -> None:
    precision = prec.get_precision(name, "cpu", keep_float32=keep)
    model = precision.convert_module(Block())
    assert model.proj.weight.dtype == dtype
    assert {p.dtype for p in [*model.norm.parameters(), *model.head.parameters()]} == {torch.float32}
    seen = _record(model)
    with precision.forward_context():
        output = model(precision.convert_input(torch.randn(4, 8)))
    assert seen["proj"]["out"] == dtype and seen["norm"]["out"] == dtype and seen["head"]["out"] == dtype
    assert output.dtype == dtype
    output.float().sum().backward()
    assert model.proj.weight.grad.dtype == dtype
    assert model.norm.weight.grad.dtype == torch.float32 and model.head.weight.grad.dtype == torch.float32


class Probe(torch.nn.Module):
    """Records what its own forward sees: input dtype, output dtype, autocast state."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)
        self.seen: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        self.seen = [x.dtype, out.dtype, torch.is_autocast_enabled("cpu")]
        return out


def test_inside_a_kept_module_the_math_is_float32() -> None:
    precision = prec.get_precision("bf16-true", "cpu", keep_float32=[Probe])
    model = precision.convert_module(torch.nn.Sequential(torch.nn.Linear(8, 8), Probe()))
    with precision.forward_context():
        output = model(precision.convert_input(torch.randn(2, 8)))
    assert model[1].seen == [torch.float32, torch.float32, False]
    assert output.dtype == torch.bfloat16  # cast back for the rest of the model


def test_mixed_precision_runs_kept_modules_outside_autocast() -> None:
    precision = prec.get_precision("bf16-mixed", "cpu", keep_float32=["1"])
    model = precision.convert_module(torch.nn.Sequential(torch.nn.Linear(8, 8), Probe(), Probe()))
    with precision.forward_context():
        output = model(torch.randn(2, 8))
    assert model[1].seen == [torch.float32, torch.float32, False]  # kept: float32, outside autocast
    assert model[2].seen == [torch.float32, torch.bfloat16, True]  # not kept: autocast as usual
    assert output.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.is_autocast_enabled("cpu") is False


def test_an_exception_inside_a_kept_module_leaves_autocast_as_it_was() -> None:
    precision = prec.get_precision("bf16-mixed", "cpu", keep_float32=[torch.nn.ReLU])
    model = precision.convert_module(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(TypeError), precision.forward_context():
        try:
            model("not a tensor")
        finally:
            assert torch.is_autocast_enabled("cpu")


def test_64_true_keeps_matched_modules_float32() -> None:
    precision = prec.get_precision("64-true", "cpu", keep_float32=[torch.nn.LayerNorm])
    model = precision.convert_module(Block())
    assert model.proj.weight.dtype == torch.float64 and model.norm.weight.dtype == torch.float32
    assert model(precision.convert_input(torch.randn(2, 8))).dtype == torch.float64


def test_32_true_accepts_the_option_and_changes_nothing() -> None:
    precision = prec.get_precision("32-true", "cpu", keep_float32=["head"])
    assert {p.dtype for p in precision.convert_module(Block()).parameters()} == {torch.float32}


@pytest.mark.parametrize("bad", [[3], "x", [torch.Tensor]])
def test_bad_keep_float32_is_a_configuration_error(bad: Any) -> None:
    if bad == "x":  # one pattern is fine
        prec.get_precision("bf16-true", "cpu", keep_float32=bad)
        return
    with pytest.raises(prec.ConfigurationError, match="keep_float32=.*must be a sequence of torch.nn.Module"):
        prec.get_precision("bf16-true", "cpu", keep_float32=bad)


class Net(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.block(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("master_weights", [None, "fp32", "kahan"])
def test_trainer_init_module_and_checkpoints_respect_the_policy(master_weights: str | None, tmp_path: Path) -> None:
    trainer = prec.Trainer(
        accelerator="cpu",
        precision="bf16-true",
        precision_options={"keep_float32": [torch.nn.LayerNorm, "*head"], "master_weights": master_weights},
        max_steps=4,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    with trainer.init_module():
        model = Net()
    assert model.block.norm.weight.dtype == torch.bfloat16  # born under the init context ...
    data = [(torch.randn(4, 8), torch.randn(4, 2)) for _ in range(4)]
    trainer.fit(model, data)
    assert model.block.norm.weight.dtype == torch.float32  # ... and kept float32 once the run set it up
    assert model.block.head.weight.dtype == torch.float32 and model.block.proj.weight.dtype == torch.bfloat16
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    saved = torch.load(tmp_path / "p.ckpt", weights_only=True)["state_dict"]
    assert saved["block.norm.weight"].dtype == torch.float32 and saved["block.proj.weight"].dtype == torch.bfloat16
    fresh = Net()
    again = prec.Trainer(
        accelerator="cpu",
        precision="bf16-true",
        precision_options={"keep_float32": [torch.nn.LayerNorm, "*head"], "master_weights": master_weights},
        max_steps=5,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    again.fit(fresh, data, ckpt_path=tmp_path / "p.ckpt")
    assert fresh.block.norm.weight.dtype == torch.float32


def test_fsdp_policy_groups_name_the_kept_modules() -> None:
    pytest.importorskip("torch.distributed.fsdp")
    precision = prec.get_precision("bf16-mixed", "cpu", keep_float32=[torch.nn.LayerNorm])
    model = Block()
    groups = list(fsdp_policy_groups(model, precision))
    assert [module for module, _ in groups] == [model.norm]
    policy = groups[0][1]["mp_policy"]
    assert policy.param_dtype == torch.float32 and policy.reduce_dtype == torch.float32
    assert list(fsdp_policy_groups(model, prec.get_precision("bf16-mixed", "cpu"))) == []
