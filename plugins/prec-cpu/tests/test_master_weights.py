"""bf16-true / 16-true that keep their updates: master weights, Kahan compensation, stochastic rounding."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import prec
from prec.precision import MasterWeightsPrecision, stochastic_round

pytestmark = pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
MODES = ["fp32", "kahan", "stochastic"]


def _moved(precision: prec.Precision, optimizer_type: Any = torch.optim.AdamW, steps: int = 100) -> float:
    """The issue's case: lr 1e-4 on weights of 1.0 with unit gradients; mean movement of the effective weights."""
    model = precision.convert_module(torch.nn.Linear(256, 256, bias=False))
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = optimizer_type(model.parameters(), lr=1e-4)
    precision.setup_optimizer(optimizer)
    if isinstance(precision, MasterWeightsPrecision):
        precision.sync_from_model()
    for _ in range(steps):
        model.weight.grad = torch.ones_like(model.weight)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    weight = model.weight.detach().float()
    if isinstance(precision, MasterWeightsPrecision):
        weight = precision.effective_weight(model.weight)
    return float((1.0 - weight).mean())


@pytest.mark.parametrize(("mode", "low"), [("fp32", 0.999), ("kahan", 0.99), ("stochastic", 0.99)])
def test_small_updates_are_kept(mode: str, low: float) -> None:
    reference = _moved(prec.get_precision("32-true", "cpu"))
    assert _moved(prec.get_precision("bf16-true", "cpu")) == 0.0  # plain bf16 loses every update
    kept = _moved(prec.get_precision("bf16-true", "cpu", master_weights=mode)) / reference
    assert low <= kept <= 1.01


def test_16_true_keeps_updates_with_fp32_masters() -> None:
    reference = _moved(prec.get_precision("32-true", "cpu"), torch.optim.SGD)
    assert _moved(prec.get_precision("16-true", "cpu", master_weights="fp32"), torch.optim.SGD) == pytest.approx(
        reference, rel=1e-6
    )


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("bf16-true", {"master_weights": "fp64"}, "master_weights=.fp64. must be None .* or one of"),
        ("16-true", {"master_weights": "kahan"}, "needs bfloat16 weights"),
        ("bf16-true", {"master_weight": "fp32"}, "Did you mean 'master_weights'"),
    ],
)
def test_bad_master_weight_options(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.get_precision(name, "cpu", **options)


@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
@pytest.mark.parametrize("optimizer_type", [torch.optim.Rprop, torch.optim.ASGD, torch.optim.Adafactor])
def test_cheap_modes_drive_optimizers_not_linear_in_lr(mode: str, optimizer_type: Any) -> None:
    """Working copies step any optimizer: Rprop's sign-based update is kept as well as Adam's."""
    reference = _moved(prec.get_precision("32-true", "cpu"), optimizer_type)
    kept = _moved(prec.get_precision("bf16-true", "cpu", master_weights=mode), optimizer_type)
    assert kept == pytest.approx(reference, rel=0.02)


@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
def test_cheap_modes_keep_16_bit_state_between_steps(mode: str) -> None:
    precision = prec.get_precision("bf16-true", "cpu", master_weights=mode)
    model = precision.convert_module(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision.setup_optimizer(optimizer)
    for _ in range(3):
        precision.backward(model(torch.randn(16, 4).bfloat16()).float().pow(2).mean())
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert params == list(model.parameters())  # the working copies are gone
    for param in params:
        assert param.dtype == torch.bfloat16
        state = optimizer.state[param]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
        assert state["step"].item() == 3


@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
def test_chunked_steps_equal_one_step(mode: str) -> None:
    """Stepping a chunk of parameters at a time (bounded transient memory) changes nothing in the result."""
    from prec.precision.working_copies import WorkingCopyStepper

    results = []
    for chunk_elements in (1 << 24, 40):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 1)).bfloat16()
        model[1].float()  # a float32 module, stepped once with the first chunk
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        entries = [(p, torch.zeros_like(p) if mode == "kahan" else None) for p in model.parameters()]
        entries = [(p, c) for p, c in entries if p.dtype == torch.bfloat16]
        stepper = WorkingCopyStepper(optimizer, entries, torch.Generator().manual_seed(3), chunk_elements)
        x = torch.randn(8, 6)
        for _ in range(4):
            y = model[2](model[1](model[0](x.bfloat16()).float()).bfloat16())
            y.float().pow(2).mean().backward()
            stepper.step(None, {})
            optimizer.zero_grad()
        results.append([p.detach().clone() for p in model.parameters()])
    for one, chunked in zip(*results, strict=True):
        assert torch.equal(one, chunked)


@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
def test_cheap_modes_skip_nonfinite_steps_untouched(mode: str) -> None:
    precision = prec.get_precision("bf16-true", "cpu", master_weights=mode)
    model = precision.convert_module(torch.nn.Linear(4, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision.setup_optimizer(optimizer)
    for grad in (1.0, float("nan")):
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        before = [p.detach().clone() for p in model.parameters()]
        state = {k: v.clone() for k, v in optimizer.state[model.weight].items()} if grad != 1.0 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            precision.optimizer_step(optimizer)
    assert precision.step_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(v, optimizer.state[model.weight][k]) for k, v in state.items())


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_works_with_lbfgs_closures(mode: str) -> None:
    """LBFGS re-evaluates the model inside its step: it must see the weights being stepped."""
    torch.manual_seed(0)
    precision = prec.get_precision("bf16-true", "cpu", master_weights=mode)
    model = precision.convert_module(torch.nn.Linear(4, 1))
    x, y = torch.randn(32, 4).bfloat16(), torch.randn(32, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    precision.setup_optimizer(optimizer)

    def closure() -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
        precision.backward(loss)
        return loss

    first = closure().item()
    model.zero_grad()
    for _ in range(3):
        precision.optimizer_step(optimizer, closure)
    assert torch.nn.functional.mse_loss(model(x).float(), y).item() < first
    if mode != "fp32":  # the working copies are gone after the step
        assert [p for g in optimizer.param_groups for p in g["params"]] == list(model.parameters())


class _Net(prec.TrainingModule):
    def __init__(self, seen: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.seen = seen if seen is not None else []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen.append({"grads": [p.grad.clone() for g in optimizer.param_groups for p in g["params"]]})

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen[-1]["weights"] = [p.detach().clone() for p in self.net.parameters()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.1)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=generator)
    return list(zip(x.split(8), (x @ torch.randn(8, 1, generator=generator)).split(8), strict=True))


def test_fit_matches_a_raw_loop_with_fp32_masters_step_by_step(tmp_path: Path) -> None:
    """Held out: the Trainer under master_weights='fp32' against float32 masters stepped by hand."""
    seen: list[dict[str, Any]] = []
    model = _Net(seen)
    raw = copy.deepcopy(model.net).bfloat16()
    trainer = prec.Trainer(
        accelerator="cpu",
        precision="bf16-true",
        precision_options={"master_weights": "fp32"},
        max_epochs=2,
        gradient_clip_val=0.5,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, _data())

    masters = [p.detach().float().clone() for p in raw.parameters()]
    optimizer = torch.optim.AdamW(masters, lr=3e-3, weight_decay=0.1)
    step = 0
    for _ in range(2):
        for x, y in _data():
            loss = torch.nn.functional.mse_loss(raw(x.bfloat16()).float(), y.bfloat16())  # the Trainer casts both
            loss.backward()
            for master, param in zip(masters, raw.parameters(), strict=True):
                master.grad = param.grad.float()
            assert all(torch.equal(a, b) for a, b in zip(seen[step]["grads"], [m.grad for m in masters], strict=True))
            torch.nn.utils.clip_grad_norm_(masters, 0.5)
            optimizer.step()
            with torch.no_grad():
                for master, param in zip(masters, raw.parameters(), strict=True):
                    param.copy_(master)
                    param.grad = None
            assert all(torch.equal(a, b) for a, b in zip(seen[step]["weights"], raw.parameters(), strict=True)), step
            step += 1
    assert step == 16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("mode", ["fp32", "kahan", "stochastic"])
def test_resume_is_exact(mode: str, tmp_path: Path) -> None:
    options = {"master_weights": mode}

    def trainer(**kwargs: Any) -> prec.Trainer:
        return prec.Trainer(
            accelerator="cpu",
            precision="bf16-true",
            precision_options=options,
            enable_progress_bar=False,
            default_root_dir=tmp_path,
            **kwargs,
        )

    straight = _Net()
    trainer(max_steps=12).fit(straight, _data())
    first = _Net()
    run = trainer(max_steps=5)
    run.fit(first, _data())
    run.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _Net()
    trainer(max_steps=12).fit(resumed, _data(), ckpt_path=tmp_path / "half.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))


@pytest.mark.parametrize(
    ("saved", "loaded", "match"),
    [
        ("fp32", "kahan", "compensation is rebuilt"),
        ("kahan", "fp32", "float32 copies are rebuilt"),
        (None, "fp32", "starts from the model's 16-bit weights"),
        ("stochastic", "kahan", "starts from"),
    ],
)
def test_checkpoints_load_across_modes_with_a_warning(
    saved: str | None, loaded: str, match: str, tmp_path: Path
) -> None:
    def run(mode: str | None, steps: int, ckpt: Path | None = None) -> prec.Trainer:
        trainer = prec.Trainer(
            accelerator="cpu",
            precision="bf16-true",
            precision_options={"master_weights": mode},
            max_steps=steps,
            enable_progress_bar=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(_Net(), _data(), ckpt_path=ckpt)
        return trainer

    run(saved, 3).save_checkpoint(tmp_path / "a.ckpt")
    with pytest.warns(prec.PrecWarning, match=match):
        run(loaded, 6, tmp_path / "a.ckpt")


def test_kahan_conversion_from_masters_keeps_16_more_bits() -> None:
    source = prec.get_precision("bf16-true", "cpu", master_weights="fp32")
    model = source.convert_module(torch.nn.Linear(8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    source.setup_optimizer(optimizer)
    for _ in range(5):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        source.optimizer_step(optimizer)
    masters = source.state_dict()["masters"][0]
    target = prec.get_precision("bf16-true", "cpu", master_weights="kahan")
    target.setup_optimizer(torch.optim.SGD(model.parameters(), lr=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prec.PrecWarning)
        target.load_state_dict(source.state_dict())
    compensation = target.state_dict()["compensation"][0]
    for master, param, comp in zip(masters, model.parameters(), compensation, strict=True):
        error = (param.float() + comp.float() - master).abs()
        assert bool((error <= 2**-16 * master.abs() + 1e-12).all()), error.max()


def test_stochastic_rounding_is_unbiased() -> None:
    values = torch.full((200_000,), 1.0 - 1e-4)
    generator = torch.Generator().manual_seed(0)
    rounded = stochastic_round(values, generator).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 - 2**-8}
    assert rounded.mean().item() == pytest.approx(1.0 - 1e-4, abs=2e-6)
    special = torch.tensor([float("inf"), float("-inf"), 0.0])
    assert torch.equal(stochastic_round(special).float(), special)


@pytest.mark.parametrize("mode", MODES)
def test_effective_weight_is_the_full_precision_value(mode: str) -> None:
    precision = prec.get_precision("bf16-true", "cpu", master_weights=mode)
    model = precision.convert_module(torch.nn.Linear(8, 8, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    precision.setup_optimizer(optimizer)
    precision.sync_from_model()
    for _ in range(20):
        model.weight.grad = torch.ones_like(model.weight)
        precision.optimizer_step(optimizer)
    effective = precision.effective_weight(model.weight)
    assert effective.dtype == torch.float32
    if mode == "stochastic":  # nothing kept beside the weight
        assert torch.equal(effective, model.weight.float())
    else:  # 20 steps of 1e-4 below the bfloat16 grid of the weights: kept beside them
        assert not torch.equal(effective, model.weight.float())
    untracked = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    assert torch.equal(precision.effective_weight(untracked), untracked.float())
