"""The scripts under benchmarks/ run end to end (tiny sizes, one round) and write their result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(tmp_path: Path, script: str, *args: str) -> None:
    environment = {**os.environ, "PREC_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=environment, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_step_overhead_writes_json_and_markdown(tmp_path: Path) -> None:
    _run(tmp_path, "step_overhead.py", "--model", "tiny", "--runners", "raw", "prec", "prec+log",
         "--precisions", "32-true", "bf16-mixed", "--rounds", "1", "--steps", "5", "--warmup", "2")  # fmt: skip
    data = json.loads((tmp_path / "step_overhead_tiny.json").read_text())
    cases = {(row["precision"], row["runner"]) for row in data["results"]}
    assert ("bf16-mixed", "prec+log") in cases and ("32-true", "raw") in cases
    for row in data["results"]:
        assert row["wall"]["us_per_step"]["median"] > 0 and row["cpu"]["us_per_step"]["median"] > 0
    overhead = next(r for r in data["results"] if r["runner"] == "prec" and r["precision"] == "32-true")
    assert overhead["wall"]["target"] == "overhead <= 10 us" and isinstance(overhead["wall"]["met"], bool)
    assert "| 32-true | prec |" in (tmp_path / "step_overhead_tiny.md").read_text()


@pytest.mark.slow
def test_init_memory_counts_no_init_kernels_with_empty_init(tmp_path: Path) -> None:
    _run(tmp_path, "init_memory.py", "--rounds", "1", "--layers", "2", "--width", "512")
    data = json.loads((tmp_path / "init_memory.json").read_text())
    by_case = {row["case"]: row for row in data["results"]}
    assert by_case["prec bf16-true: init_module()"]["dtypes"] == ["bfloat16"]
    assert by_case["prec 32-true: init_module()"]["init_ops"]  # real initialisation happens without empty_init
    assert data["checks"]["empty_init_no_init_work"] is True
