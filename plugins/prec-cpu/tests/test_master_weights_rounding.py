"""The parsed master_weights value, and the one-pass stochastic rounding the cheap modes step with."""

from __future__ import annotations

import pytest
import torch

import prec
from prec.precision.master import MASTER_WEIGHT_MODES, MasterWeights
from prec.precision.rounding import NoiseStream, round_into, stochastic_round
from prec.precision.working_copies import WorkingCopyStepper


def test_master_weights_parses_once_into_what_it_means() -> None:
    assert MASTER_WEIGHT_MODES == MasterWeights.spellings() == ("fp32", "kahan", "stochastic")
    assert MasterWeights.parse(None) is None
    kahan = MasterWeights.parse("kahan")
    assert kahan is MasterWeights.KAHAN and kahan == "kahan" and f"{kahan}" == "kahan"
    table = {
        m.value: (m.keeps_float32_copy, m.compensates, m.rounds_stochastically, m.bytes_per_param)
        for m in MasterWeights
    }
    assert table == {
        "fp32": (True, False, False, 4),
        "kahan": (False, True, True, 2),
        "stochastic": (False, False, True, 0),
    }
    with pytest.raises(prec.ConfigurationError, match=r"master_weights='fp64' is not valid; use None .* 'kahan'"):
        MasterWeights.parse("fp64")
    precision = prec.get_precision("bf16-true", "cpu", master_weights="stochastic")
    assert precision.master_weights is MasterWeights.STOCHASTIC
    assert precision.state_dict()["master_weights"] == "stochastic" and "stochastic" in repr(precision)


def test_rounding_keeps_infinities_and_nan() -> None:
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -float("nan"), 0.0, -0.0, 1.0])
    rounded = stochastic_round(special, torch.Generator().manual_seed(0)).float()
    assert torch.equal(rounded[[0, 1, 4, 5, 6]], special[[0, 1, 4, 5, 6]])
    assert rounded[2:4].isnan().all()


def test_noise_depends_on_the_place_in_the_sequence_not_on_the_calls() -> None:
    sources = [torch.randn(n) for n in (5, 17, 64, 3)]
    whole = [torch.empty(n, dtype=torch.bfloat16) for n in (5, 17, 64, 3)]
    split = [torch.empty_like(t) for t in whole]
    round_into(list(zip(sources, whole, strict=True)), NoiseStream(torch.Generator().manual_seed(4)))
    stream = NoiseStream(torch.Generator().manual_seed(4))
    round_into(list(zip(sources[:2], split[:2], strict=True)), stream)
    round_into(list(zip(sources[2:], split[2:], strict=True)), stream)
    assert all(torch.equal(a, b) for a, b in zip(whole, split, strict=True))


@pytest.mark.parametrize("kahan", [False, True])
def test_one_buffer_per_chunk_equals_a_copy_per_tensor(kahan: bool) -> None:
    """The packed path (plain tensors) and the tensor-by-tensor path (DTensors keep their layout) round alike."""
    results = []
    for packed in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)).bfloat16()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        entries = [(p, torch.zeros_like(p) if kahan else None) for p in model.parameters()]
        stepper = WorkingCopyStepper(optimizer, entries, torch.Generator().manual_seed(3))
        stepper.packed = packed
        for _ in range(3):
            model(torch.randn(4, 6).bfloat16()).float().pow(2).mean().backward()
            stepper.step(None, {})
            optimizer.zero_grad()
        state = [v for s in optimizer.state.values() for v in s.values()]
        results.append([p.detach().clone() for p in model.parameters()] + state)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
