from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _modules import load_module

import prec
from prec.numerics import NumericsRecorder, format_table, make_plan, measure

models = load_module(Path(__file__).with_name("models.py"), "_prec_numerics_models")


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


def _step(model: torch.nn.Module, recorder: NumericsRecorder, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
    model.zero_grad(set_to_none=True)
    recorder.start()
    models.mse(model, batch).backward()
    return recorder.stop().scalars()


def test_fp16_overflow_is_reported_for_the_overflowing_layer_alone_and_the_plan_keeps_it() -> None:
    model = models.Overflowing()
    batch = models.batch()
    scalars = _step(model, NumericsRecorder(model, formats=["fp16", "bf16"]), batch)
    overflowing = {key for key, value in scalars.items() if key.endswith("/fp16/overflow") and value > 0}
    assert overflowing == {"numerics/big/activations/fp16/overflow"}
    assert scalars["numerics/big/activations/fp16/overflow"] > 0.5
    assert scalars["numerics/big/activations/amax"] > 65504
    assert all(value == 0 for key, value in scalars.items() if key.endswith("/bf16/overflow"))

    plan = make_plan(measure(model, batch, models.mse, precision="16-mixed", steps=1), "16-mixed")
    assert [decision.module for decision in plan.keep_float32] == ["big"]
    assert "exceed fp16's largest value 65504" in plan.keep_float32[0].reason
    assert plan.precision_options() == {"keep_float32": ["big"]}
    assert plan.master_weights is None and not plan.fp8_exclude


def test_no_hook_before_start_or_after_stop_and_the_same_numbers_twice() -> None:
    model = models.WithNorms()
    before = _hooks(model)
    recorder = NumericsRecorder(model)
    assert _hooks(model) == before and not recorder.active
    batch = models.batch(16)
    first = _step(model, recorder, batch)
    assert _hooks(model) == before and not recorder.active
    second = _step(model, recorder, batch)
    assert first == second and len(first) > 0
    model.zero_grad()
    models.mse(model, batch).backward()  # a step without start(): nothing recorded, nothing fails
    assert _hooks(model) == before


def test_keys_are_flat_and_documented() -> None:
    model = models.WithNorms()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = NumericsRecorder(model, formats=["bf16", "e4m3"])
    recorder.start()
    models.mse(model, models.batch(16)).backward()
    recorder.before_optimizer_step(optimizer)
    optimizer.step()
    recorder.after_optimizer_step()
    result = recorder.stop()
    assert all(isinstance(value, torch.Tensor) for value in result.counts.values())  # nothing read yet
    scalars = result.scalars()
    for module in ("inp", "norm", "out"):
        for kind in ("activations", "gradients", "weights", "updates"):
            assert f"numerics/{module}/{kind}/amax" in scalars
            for fmt in ("bf16", "e4m3"):
                assert f"numerics/{module}/{kind}/{fmt}/underflow" in scalars
                assert f"numerics/{module}/{kind}/{fmt}/overflow" in scalars
            assert scalars[f"numerics/{module}/{kind}/e4m3/overflow"] == 0.0  # scaled: 0 by construction
        assert f"numerics/{module}/weights/lost_update" in scalars
        assert f"numerics/{module}/weight/lost_update" in scalars
    assert scalars["numerics/norm/weight/lost_update"] == pytest.approx(0.0, abs=1e-6)  # float32 keeps updates
    assert result.to_dict()["norm"]["activations"]["bf16"]["underflow"] == 0.0


def test_underflow_counts_nonzero_values_below_the_smallest_normal_after_scaling() -> None:
    layer = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
    recorder = NumericsRecorder(layer, formats=["fp16", "e4m3"], kinds=("activations",))
    recorder.start()
    layer(torch.tensor([[1e-6, 100.0, 0.0, 1e-3]]))
    values = recorder.stop().to_dict()[""]["activations"]
    # Nonzero: 1e-6, 100, 1e-3. fp16: only 1e-6 is below 2**-14. e4m3, scaled by 448/100: 4.5e-6 and 4.5e-3 are
    # both below 2**-6.
    assert values["fp16"]["underflow"] == pytest.approx(1 / 3)
    assert values["e4m3"]["underflow"] == pytest.approx(2 / 3)
    assert values["amax"] == 100.0 and values["fp16"]["overflow"] == 0.0
    recorder.start()
    layer(torch.zeros(2, 4))  # all zeros: nothing to under- or overflow, in any format
    zeros = recorder.stop().to_dict()[""]["activations"]
    assert zeros["amax"] == 0.0 and all(zeros[fmt] == {"underflow": 0.0, "overflow": 0.0} for fmt in ("fp16", "e4m3"))


def test_top_offenders_sorted_by_badness_and_a_table_in_80_columns() -> None:
    model = models.Overflowing()
    recorder = NumericsRecorder(model, formats=["fp16", "e4m3"])
    recorder.start()
    models.mse(model, models.batch()).backward()
    rows = recorder.stop().top_offenders(5)
    assert rows[0][:4] == ("big", "activations", "fp16", "overflow")
    assert all(row.value > 0 for row in rows) and len(rows) <= 5
    table = format_table(rows)
    assert all(len(line) <= 80 for line in table.splitlines()) and "big" in table
    narrow = format_table([rows[0]._replace(module="encoder.layers.11.attention.out_proj.very_long_name")], width=60)
    assert all(len(line) <= 60 for line in narrow.splitlines())
    assert narrow.splitlines()[2].startswith("...") and "very_long_name activations" in narrow
    with pytest.raises(prec.ConfigurationError, match="width"):
        format_table(rows, width=20)


def test_histograms_count_values_per_binade() -> None:
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.5, 0.0], [2.0**-20, 3.0]]))
    recorder = NumericsRecorder(layer, kinds=("weights",), histograms=True)
    recorder.start()
    result = recorder.stop()
    histogram = result.histograms()["numerics/(root)/weights"]
    edges = result.histogram_edges()
    assert histogram.sum() == 3  # the zero is not counted
    assert histogram[int((0 - edges[0]).item())] == 1 and histogram[int((1 - edges[0]).item())] == 1
    assert histogram[int((-20 - edges[0]).item())] == 1
    assert result.histogram_values("numerics/(root)/weights").numel() == 3
    with pytest.raises(prec.ConfigurationError, match="histograms=True"):
        NumericsRecorder(layer).stop().histograms()


def test_filter_kinds_and_misuse_are_clear() -> None:
    model = models.WithNorms()
    recorder = NumericsRecorder(model, module_filter=lambda name, module: name == "norm")
    assert list(recorder.modules) == ["norm"]
    assert set(NumericsRecorder(model).modules) == {"inp", "norm", "out"}
    with pytest.raises(prec.ConfigurationError, match="kinds="):
        NumericsRecorder(model, kinds=("activations", "logits"))
    with pytest.raises(prec.ConfigurationError, match="module_filter must be a callable"):
        NumericsRecorder(model, module_filter="norm")  # type: ignore[arg-type]
    recorder.start()
    with pytest.raises(prec.ConfigurationError, match="start\\(\\) called twice"):
        recorder.start()
    recorder.stop()
    with pytest.raises(prec.ConfigurationError, match="needs start"):
        recorder.before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))


def test_multihead_attention_and_embedding_are_recorded() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.embed(tokens)
            return self.attn(h, h, h)[0]

    model = Tiny()
    recorder = NumericsRecorder(model, formats=["bf16"])
    recorder.start()
    model(torch.randint(0, 10, (2, 5))).square().mean().backward()
    scalars = recorder.stop().scalars()
    assert "numerics/embed/gradients/amax" in scalars and "numerics/attn/activations/amax" in scalars
    assert "numerics/attn/weights/amax" in scalars
