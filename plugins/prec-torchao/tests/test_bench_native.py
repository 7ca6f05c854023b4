"""``prec bench`` does not call an emulated fp8 precision native: its speed on a CPU is not fp8's."""

from __future__ import annotations

import pytest

from prec.cli.bench import run_bench


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
def test_emulated_fp8_is_not_native_on_cpu() -> None:
    data = run_bench("mlp-small", "cpu", steps=2, warmup=1, repeats=1, precisions=["32-true", "fp8-mixed"],
                     progress=False)  # fmt: skip
    native = {result["precision"]: result["native"] for result in data["results"]}
    assert native == {"32-true": True, "fp8-mixed": False}
