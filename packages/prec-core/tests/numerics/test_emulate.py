from __future__ import annotations

import math
from pathlib import Path

import torch
from _modules import load_module

from prec.numerics import FORMATS, measure
from prec.numerics.emulate import CallCapture, layer_errors, relative_error

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


def test_relative_error_handles_zero_and_inf() -> None:
    assert relative_error(torch.ones(4), torch.ones(4)) == 0.0
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_error(torch.tensor([math.inf]), torch.ones(1)) == math.inf
    assert relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == 1.0


def test_capture_records_inputs_and_output_gradients_then_removes_its_hooks() -> None:
    layer = torch.nn.Linear(4, 3)
    capture = CallCapture({"layer": layer})
    x = torch.randn(2, 4)
    with capture.active():
        layer(x).sum().backward()
    layer(x).sum().backward()  # after the block: not recorded
    (call,) = capture.calls["layer"]
    assert torch.equal(call.args[0], x) and torch.equal(call.grad_output, torch.ones(2, 3))
    assert not layer._forward_hooks
    forward, backward = layer_errors(layer, capture.calls["layer"], FORMATS["bf16"])
    assert 0 < forward < 0.02 and 0 < backward < 0.02


def test_an_fp16_overflow_is_an_infinite_error() -> None:
    layer = torch.nn.Linear(4, 4)
    capture = CallCapture({"layer": layer})
    with capture.active():
        layer(torch.full((1, 4), 1e5)).sum().backward()
    assert layer_errors(layer, capture.calls["layer"], FORMATS["fp16"])[0] == math.inf
    assert layer_errors(layer, capture.calls["layer"], FORMATS["bf16"])[0] < 0.02


def test_attention_embedding_and_dropout_are_replayed() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(10, 8)
            self.attn = torch.nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
            self.head = torch.nn.Linear(8, 1)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.embed(tokens)
            return self.head(self.attn(h, h, h, need_weights=False)[0]).squeeze(-1)

    tokens = torch.randint(0, 10, (4, 6), generator=torch.Generator().manual_seed(0))
    target = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    measured = measure(Tiny(), (tokens, target), models.mse, ["fp32", "bf16"])
    attn = measured.layers["attn"]
    assert attn.forward_error["fp32"] < 1e-5  # the same dropout mask in both replays
    assert attn.forward_error["bf16"] < 0.02 and attn.matmul_size == 4 * 8 * 8
    assert measured.layers["embed"].backward_error["bf16"] is None  # integer input: no input gradient
    assert measured.layers["embed"].forward_error["bf16"] < 0.01
