"""The per-step cost of prec's loop, counted in Python and C calls (a measure a busy machine cannot distort)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
step_calls = pytest.importorskip("step_calls")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_prec_stays_within_5_percent_of_a_raw_loop_in_calls_per_step(precision: str) -> None:
    raw = step_calls.count("raw", precision, 12)["total"]
    ours = step_calls.count("prec", precision, 12)["total"]
    assert ours <= step_calls.TARGET * raw, f"prec makes {ours} calls per step, the raw loop {raw}"
