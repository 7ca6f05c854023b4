"""Real bitsandbytes layers on the CPU: building quantized, gradients, fine-tuning with the Trainer, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

FOUR_BIT = ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-fp4-dq"]
CPU_NAMES = [*FOUR_BIT, "bnb-int8"]
pytestmark = pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")


class Adapted(prec.TrainingModule):
    """A frozen two-layer base with a float32 low-rank adapter on its first layer and a float32 head."""

    def __init__(self, width: int = 64, rank: int = 4) -> None:
        super().__init__()
        self.base = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width))
        self.down = torch.nn.Linear(width, rank, bias=False)
        self.up = torch.nn.Linear(rank, width, bias=False)
        torch.nn.init.zeros_(self.up.weight)
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.base[0](x) + self.up(self.down(x))
        return self.head(self.base[2](self.base[1](hidden)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x).float(), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


OPTIONS = {"ignore_modules": ["down", "up", "head"]}


def build(name: str, **options: object) -> tuple[prec.Precision, Adapted]:
    precision = prec.get_precision(name, "cpu", **{**OPTIONS, **options})
    torch.manual_seed(0)
    model = Adapted()  # built in float32, quantized by convert_module
    return precision, precision.convert_module(model)


@pytest.mark.parametrize("name", CPU_NAMES)
def test_base_is_frozen_and_quantized_the_rest_float32(name: str) -> None:
    precision, model = build(name)
    assert precision.report.quantized == ["base.0", "base.2"] and precision.report.kept == ["down", "up", "head"]
    for layer in (model.base[0], model.base[2]):
        assert layer.weight.dtype in (torch.uint8, torch.int8) and not layer.weight.requires_grad
        assert layer.bias.dtype == torch.float32
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert {"down.weight", "up.weight", "head.weight", "head.bias"} <= trainable
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)


@pytest.mark.parametrize("name", CPU_NAMES)
def test_backward_reaches_the_trainable_parameters(name: str) -> None:
    precision, model = build(name)
    x = torch.randn(8, 64)
    with precision.forward_context():
        out = model(precision.convert_input(x))
    assert out.dtype == torch.bfloat16  # the compute dtype under autocast
    precision.backward(precision.convert_output(out).square().mean(), model)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert grads["up.weight"].abs().sum() > 0 and grads["base.0.bias"].abs().sum() > 0
    assert model.base[0].weight.grad is None


def test_quantized_forward_is_close_to_float(name: str = "bnb-nf4") -> None:
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(256, 256))
    x = torch.randn(16, 256)
    expected = reference(x)
    precision = prec.get_precision(name, "cpu", compute_dtype="fp32")
    quantized = precision.convert_module(reference)
    error = (quantized(x) - expected).norm() / expected.norm()
    assert 0.0 < error < 0.15, error  # nf4 keeps ~3 significant bits


@pytest.mark.parametrize("name", ["bnb-nf4", "bnb-fp4-dq", "bnb-int8"])
def test_fine_tuning_with_the_trainer_lowers_the_loss(name: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(256, 64)
    y = torch.sin(x[:, :8].sum(1, keepdim=True))
    trainer = prec.Trainer(
        accelerator="cpu",
        precision=name,
        precision_options=OPTIONS,
        max_epochs=6,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    with trainer.init_module():
        model = Adapted()
    loss = lambda: torch.nn.functional.mse_loss(model(x).float(), y).item()  # noqa: E731
    before = loss()
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=32))
    assert loss() < 0.7 * before
    assert type(model.base[0]).__name__.startswith("Linear") and model.base[0].weight.dtype in (torch.uint8, torch.int8)


@pytest.mark.parametrize("name", CPU_NAMES)
def test_init_module_quantizes_as_it_builds(name: str) -> None:
    precision = prec.get_precision(name, "cpu", **OPTIONS)
    with precision.module_init_context():
        model = Adapted()
        assert torch.nn.Linear is not precision.classes["base:4bit"]  # replaced inside only
    assert model.base[0].weight.dtype in (torch.uint8, torch.int8)
    assert model.down.weight.dtype in (torch.uint8, torch.int8)  # names are unknown while building ...
    precision.convert_module(model)
    assert type(model.down) is torch.nn.Linear and model.down.weight.dtype == torch.float32  # ... applied here
    assert torch.nn.Linear.__module__ == "torch.nn.modules.linear"


@pytest.mark.parametrize("name", CPU_NAMES)
def test_checkpoint_round_trip_is_bitwise(name: str, tmp_path: Path) -> None:
    precision, model = build(name)
    x = torch.randn(8, 64)
    model.train()
    with torch.no_grad(), precision.forward_context():
        expected = model(x)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh_precision = prec.get_precision(name, "cpu", **OPTIONS)
    torch.manual_seed(123)  # another random initialisation, replaced by the checkpoint
    with fresh_precision.module_init_context():
        fresh = Adapted()
    fresh_precision.convert_module(fresh)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.no_grad(), fresh_precision.forward_context():
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("name", CPU_NAMES)
def test_a_float_checkpoint_is_quantized_on_load(name: str) -> None:
    torch.manual_seed(0)
    pretrained = Adapted()
    precision = prec.get_precision(name, "cpu", **OPTIONS)
    with precision.module_init_context():
        model = Adapted()
    precision.convert_module(model)
    model.load_state_dict(pretrained.state_dict())
    _, reference = build(name)  # the same float weights quantized by convert_module
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[key], want[key]) for key in want)


def test_ignore_modules_after_loading_quantized_weights_is_an_error() -> None:
    precision = prec.get_precision("bnb-nf4", "cpu")
    with precision.module_init_context():
        model = Adapted()
    model.load_state_dict(Adapted().state_dict())
    late = prec.get_precision("bnb-nf4", "cpu", ignore_modules=["head"])
    with pytest.raises(prec.ConfigurationError, match="ignore_modules names 'head'"):
        late.convert_module(model)


@pytest.mark.parametrize("options", [{}, {"master_weights": "fp32"}])
def test_adamw8bit_with_bf16_true(options: dict) -> None:
    import bitsandbytes as bnb

    precision = prec.get_precision("bf16-true", "cpu", **options)
    torch.manual_seed(0)
    with precision.module_init_context():
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
    precision.convert_module(model)
    # 8-bit state for the 64x256 weight only
    optimizer = bnb.optim.AdamW8bit(model.parameters(), lr=3e-3, min_8bit_size=4096)
    precision.setup_module(model)
    precision.setup_optimizer(optimizer)
    x = torch.randn(128, 64)
    y = torch.tanh(x[:, :4].sum(1, keepdim=True))
    losses = []
    for _ in range(60):
        with precision.forward_context():
            out = model(precision.convert_input(x))
        loss = torch.nn.functional.mse_loss(precision.convert_output(out), y)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # the 8-bit moments of the 256x64 weight: the model's own under plain bf16-true, its float32 copy's under
    # master_weights="fp32" (the optimizer steps the copies)
    eight_bit = [state for state in optimizer.state.values() if state["state1"].dtype == torch.uint8]
    assert len(eight_bit) == 1 and all(state["state2"].dtype == torch.uint8 for state in eight_bit)
    assert model[0].weight.dtype == torch.bfloat16
