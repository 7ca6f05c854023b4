"""``prec summary MODEL``, run as a user runs it (a subprocess), against sizes computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HANG_GUARD_S = 300

#: Linear(10, 5) + LayerNorm(5): 55 + 10 = 65 parameters, AdamW (2 state tensors per parameter element).
FACTORY = textwrap.dedent(
    """
    import torch
    import prec


    class Tiny(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(10, 5)
            self.norm = torch.nn.LayerNorm(5)

        def training_step(self, batch, batch_idx):
            return self.norm(self.layer(batch)).float().pow(2).mean()

        def configure_optimizers(self):
            return {"optimizer": torch.optim.AdamW(self.parameters(), lr=1e-3)}


    def tiny():
        return Tiny(), [torch.randn(4, 10) for _ in range(4)]
    """
)


def run_summary(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tiny_factory.py").write_text(FACTORY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "prec", "summary", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False, env=env)


def summaries(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    result = run_summary(tmp_path, "tiny_factory:tiny", "--json", *args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return {entry["precision"]: entry for entry in data["precisions"]}


@pytest.mark.parametrize(
    ("precision", "options", "weights", "state", "extras"),
    [
        ("32-true", [], 65 * 4, 65 * 8, 0),
        ("bf16-mixed", [], 65 * 4, 65 * 8, 0),
        ("bf16-true", [], 65 * 2, 65 * 4, 0),
        ("bf16-true", ["--option", "master_weights=fp32"], 65 * 2, 65 * 8, 65 * 4),
        ("bf16-true", ["--option", "master_weights=kahan"], 65 * 2, 65 * 4, 65 * 2),
        # The norm's 10 parameters stay float32: weights, gradients and state in float32 for those.
        ("bf16-true", ["--option", 'keep_float32=["norm"]'], 55 * 2 + 10 * 4, 55 * 4 + 10 * 8, 0),
        ("64-true", [], 65 * 8, 65 * 16, 0),
    ],
)
def test_sizes_match_hand_computed(
    tmp_path: Path, precision: str, options: list[str], weights: int, state: int, extras: int
) -> None:
    entry = summaries(tmp_path, "--precision", precision, *options)[precision]
    assert entry["parameters_by_dtype"] and sum(entry["parameters_by_dtype"].values()) == 65
    assert entry["weight_bytes"] == weights
    assert entry["gradient_bytes"] == weights  # every parameter is trainable
    assert entry["optimizer_state_bytes"] == state
    assert entry["optimizer_state_measured"] is False  # nothing ran: estimated from AdamW
    assert sum(entry["extras"].values()) == extras
    assert entry["total_bytes"] == 2 * weights + state + extras


def test_steps_measure_the_optimizer_state(tmp_path: Path) -> None:
    entry = summaries(tmp_path, "--precision", "bf16-true", "--option", "master_weights=fp32", "--steps", "2")[
        "bf16-true"
    ]
    assert entry["optimizer_state_measured"] is True
    # AdamW's two float32 moments per element (its scalar step counters are not counted).
    assert entry["optimizer_state_bytes"] == 65 * 8
    assert entry["cuda_peak_bytes"] is None  # no CUDA here


def test_every_precision_in_canonical_order_as_a_table(tmp_path: Path) -> None:
    result = run_summary(tmp_path, "tiny_factory:tiny")
    assert result.returncode == 0, result.stderr
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:] if line and not line.startswith("on ")]
    rows = [row for row in rows if row.endswith(("-true", "-mixed"))]
    assert rows[:3] == ["bf16-mixed", "bf16-true", "32-true"] or rows.index("32-true") > rows.index("bf16-true")
    assert "estimated from the optimizer type" in result.stdout
    assert "PerformanceWarning" not in result.stderr  # nothing runs: no speed warnings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope_module:factory"], "MODEL 'nope_module:factory' cannot be loaded"),
        (["tiny_factory:tiny", "--option", "master_weights"], "is not KEY=VALUE"),
        (["tiny_factory:tiny", "--precision", "fp128"], "fp128"),
        (["tiny_factory:tiny", "--steps", "-1"], "--steps=-1 must be >= 0"),
        (["tiny_factory:tiny", "--option", "master_weights=fp32"], "name them with --precision"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_summary(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
