"""The benchmark's code paths, run tiny on CPU so the GPU run does not discover a bug in them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_cuda.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prec_cuda_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "bench.json"
    with warnings.catch_warnings():
        assert (
            load_bench().main(["--device", "cpu", "--tiny", "--steps", "3", "--warmup", "1", "--output", str(output)])
            == 0
        )
    assert "prec steps/s" in capsys.readouterr().out
    results = json.loads(output.read_text())["results"]
    assert [row["precision"] for row in results] == ["32-true", "16-mixed", "bf16-mixed", "bf16-true"]
    assert all(row["prec"]["steps_per_s"] > 0 and row["raw"]["steps_per_s"] > 0 for row in results)
    assert all(row["prec"]["skipped_steps"] == 0 for row in results)


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the machine without a GPU")
def test_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    output = tmp_path / "x.json"
    args = [sys.executable, str(BENCH), "--output", str(output)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("no CUDA device: skipped (")
    assert not output.exists()
