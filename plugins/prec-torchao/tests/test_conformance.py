"""The conformance kit on every fp8 pair that runs here (cpu, emulated).

The kit's model is too small for fp8 (8x16 and 16x1 weights), so nothing in it is converted and the precision
warns about that; the real fp8 training is tested in test_training.py.
"""

from __future__ import annotations

import pytest

from prec import PerformanceWarning
from prec.testing import check_precision, precision_pairs


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize("name", ["fp8-mixed", "fp8-bf16-true"])
def test_conformance_on_cpu(name: str) -> None:
    check_precision(name, "cpu", options={"emulate": True})


def test_the_pairs_are_registered_on_cpu() -> None:
    pairs = set(precision_pairs("cpu"))
    assert {("fp8-mixed", "cpu"), ("fp8-bf16-true", "cpu")} <= pairs


def test_a_model_without_fp8_layers_warns() -> None:
    import torch

    import prec

    precision = prec.get_precision("fp8-mixed", "cpu", emulate=True)
    with pytest.warns(PerformanceWarning, match="0 of 2 Linear layers converted"):
        precision.convert_module(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)))
