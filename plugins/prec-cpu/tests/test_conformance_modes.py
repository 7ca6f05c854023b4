"""The conformance kit covers every mode of the built-in precisions on cpu, not only their defaults."""

from __future__ import annotations

from typing import Any

import pytest

from prec.testing import check_precision
from prec.testing.conformance import modes

CASES = [case for case in modes("cpu") if case[2]]  # the default options are the plain conformance run's


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize(("precision", "accelerator", "options"), CASES, ids=[f"{n}{o}" for n, _, o in CASES])
def test_every_mode_conforms(precision: str, accelerator: str, options: dict[str, Any]) -> None:
    check_precision(precision, accelerator, options=options)


def test_the_new_modes_are_listed() -> None:
    listed = [(name, options) for name, _, options in CASES]
    assert ("bf16-true", {"master_weights": "kahan"}) in listed
    assert ("32-true", {"tf32": True}) in listed
