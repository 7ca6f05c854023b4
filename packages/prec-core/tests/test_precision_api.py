"""The Precision API in a user's own loop: contexts, conversions, backward and step, restored global state."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

import prec
from prec.precision import apply_to_tensors, default_dtype

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


def test_base_precision_is_32_true_and_a_no_op() -> None:
    plugin = prec.Precision()
    model = torch.nn.Linear(4, 2)
    assert plugin.name == "32-true" and plugin.convert_module(model) is model
    batch = (torch.randn(2, 4), torch.tensor([0, 1]))
    assert plugin.convert_input(batch) is batch
    with plugin.forward_context(), plugin.module_init_context(), plugin.tensor_init_context():
        assert torch.get_default_dtype() == torch.float32 and not torch.is_autocast_enabled("cpu")
    assert plugin.state_dict() == {} and plugin.metrics() == {}
    plugin.teardown()
    plugin.teardown()


@pytest.mark.parametrize(("name", "dtype"), [("bf16-true", torch.bfloat16), ("16-true", torch.float16)])
def test_true_precisions_in_an_own_loop(name: str, dtype: torch.dtype) -> None:
    plugin = prec.get_precision(name, "cpu")
    with plugin.module_init_context():
        model = torch.nn.Linear(8, 1)
    assert model.weight.dtype == dtype  # born in the dtype, not cast afterwards
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = plugin.convert_input((torch.randn(16, 8), torch.randn(16, 1)))
    assert x.dtype == dtype and y.dtype == dtype
    with plugin.forward_context():
        assert torch.zeros(1).dtype == dtype  # new tensors inside the step
        loss = torch.nn.functional.mse_loss(model(x), y)
    assert torch.get_default_dtype() == torch.float32
    before = model.weight.detach().clone()
    plugin.backward(loss, model)
    assert model.weight.grad is not None and model.weight.grad.dtype == dtype
    plugin.optimizer_step(optimizer)
    assert not torch.equal(before, model.weight) and not plugin.step_skipped
    assert plugin.convert_output(loss).dtype == torch.float32


def test_bf16_mixed_autocasts_matmuls_and_keeps_float32_weights() -> None:
    plugin = prec.get_precision("bf16-mixed", "cpu")
    model = plugin.convert_module(torch.nn.Linear(8, 2))
    assert model.weight.dtype == torch.float32
    x = plugin.convert_input(torch.randn(4, 8))
    assert x.dtype == torch.float32
    with plugin.forward_context():
        out = model(x)
    assert out.dtype == torch.bfloat16 and not torch.is_autocast_enabled("cpu")
    assert plugin.convert_output(out).dtype == torch.float32
    plugin.backward(out.float().sum(), model)
    assert model.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["bf16-true", "16-true", "bf16-mixed", "32-true"])
def test_contexts_restore_global_state_when_the_body_raises(name: str) -> None:
    plugin = prec.get_precision(name, "cpu")
    for context in (plugin.forward_context, plugin.module_init_context, plugin.tensor_init_context):
        with pytest.raises(RuntimeError, match="boom"), context():
            raise RuntimeError("boom")
        assert torch.get_default_dtype() == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_default_dtype_context_restores_the_previous_value_not_float32() -> None:
    with default_dtype(torch.float64):
        with default_dtype(torch.bfloat16):
            assert torch.get_default_dtype() == torch.bfloat16
        assert torch.get_default_dtype() == torch.float64


def test_convert_input_walks_nested_containers_and_leaves_integers() -> None:
    Pair = namedtuple("Pair", "x y")
    plugin = prec.get_precision("16-true", "cpu")
    batch = {"a": [torch.ones(2), (torch.arange(3), "label")], "b": Pair(torch.ones(1, dtype=torch.float64), 3)}
    out = plugin.convert_input(batch)
    assert out["a"][0].dtype == torch.float16
    assert out["a"][1][0].dtype == torch.int64 and out["a"][1][1] == "label"
    assert isinstance(out["b"], Pair) and out["b"].x.dtype == torch.float16 and out["b"].y == 3


def test_apply_to_tensors_keeps_container_types() -> None:
    data = ([torch.ones(1)], (torch.ones(1),), {"k": torch.ones(1)})
    out = apply_to_tensors(data, lambda t: t * 2)
    assert type(out) is tuple and type(out[0]) is list and type(out[1]) is tuple and type(out[2]) is dict
    assert out[2]["k"].item() == 2


@pytest.mark.parametrize(("algorithm", "bad"), [("norm", -1.0), ("l2", 1.0)])
def test_clip_gradients_rejects_bad_arguments(algorithm: str, bad: float) -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(prec.ConfigurationError):
        prec.Precision().clip_gradients(optimizer, bad, algorithm)


def test_clip_gradients_by_norm_and_value() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(torch.full((4, 2), 100.0)).sum()).backward()
    plugin = prec.Precision()
    assert plugin.clip_gradients(optimizer, 0) is None  # 0 means no clipping
    norm = plugin.clip_gradients(optimizer, 1.0, "norm")
    assert norm is not None and norm > 1.0
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-4)
    plugin.clip_gradients(optimizer, 0.01, "value")
    assert all(p.grad.abs().max() <= 0.01 + 1e-7 for p in model.parameters())


@pytest.mark.parametrize("name", ["bf16-true", "16-true"])
def test_true_precision_conversion_keeps_complex_and_integer_tensors(name: str) -> None:
    module = torch.nn.Linear(2, 2)
    module.register_buffer("phase", torch.tensor([1 + 2j, 3 - 1j]))
    module.register_buffer("count", torch.tensor([3]))
    prec.get_precision(name, "cpu").convert_module(module)
    assert module.weight.dtype == prec.get_precision(name, "cpu").param_dtype
    assert module.phase.dtype == torch.complex64 and module.phase[0].imag.item() == 2.0
    assert module.count.dtype == torch.int64
