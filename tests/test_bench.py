"""``prec bench``: real short runs on this machine's CPU, checked through the command line and its JSON."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from prec.cli.app import main
from prec.cli.bench import PrecisionResult, recommend, resolve_model
from prec.errors import ConfigurationError

FAST = ["--steps", "3", "--warmup", "1", "--repeats", "1", "--no-progress", "--threads", "1"]
RESULT_KEYS = {
    "precision", "native", "steps_per_s", "steps_per_s_min", "steps_per_s_max", "speedup_vs_32_true",
    "peak_memory_mib", "final_loss", "loss_drift", "error", "rounds",
}  # fmt: skip


def _bench(*args: str) -> dict:
    result = CliRunner().invoke(main, ["bench", *args, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_schema_covers_every_cpu_precision() -> None:
    from prec.training.composition import get_registry

    data = _bench("--model", "mlp-small", "--accelerator", "cpu")
    assert data["model"] == "mlp-small" and data["accelerator"] == "cpu"
    assert {"machine", "versions", "steps", "warmup", "repeats", "tolerance", "threads", "auto"} <= set(data)
    assert data["steps"] == 3 and data["repeats"] == 1 and data["threads"] == 1
    names = [row["precision"] for row in data["results"]]
    assert names[0] == "32-true"
    assert sorted(names) == get_registry().supported_precisions("cpu")
    for row in data["results"]:
        assert set(row) == RESULT_KEYS
        assert row["error"] is None, row
        assert row["steps_per_s"] > 0 and row["steps_per_s_min"] <= row["steps_per_s"] <= row["steps_per_s_max"]
        assert row["final_loss"] == pytest.approx(row["final_loss"])  # finite
        assert row["loss_drift"] >= 0
    baseline = data["results"][0]
    assert baseline["loss_drift"] == 0 and baseline["speedup_vs_32_true"] == 1
    assert data["recommendation"]["precision"] in names
    assert data["recommendation"]["reason"]
    assert data["auto"]["precision"] in names


def test_table_output_and_precision_subset() -> None:
    result = CliRunner().invoke(main, ["bench", "--precision", "32-true", "--precision", "bf16-mixed", *FAST])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "32-true" in out and "bf16-mixed" in out and "bf16-true" not in out
    assert "Recommended:" in out and "precision='auto' picks" in out


def test_transformer_small_runs() -> None:
    data = _bench("--model", "transformer-small", "--precision", "32-true", "--precision", "bf16-mixed")
    assert [row["precision"] for row in data["results"]] == ["32-true", "bf16-mixed"]
    assert all(row["error"] is None and row["final_loss"] > 0 for row in data["results"])


def test_user_factory_from_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_bench_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            import prec

            class Line(prec.TrainingModule):
                def __init__(self):
                    super().__init__()
                    self.layer = torch.nn.Linear(4, 1)

                def training_step(self, batch, batch_idx):
                    x, y = batch
                    return {"loss": torch.nn.functional.mse_loss(self.layer(x), y)}

                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)

            def build():
                x = torch.randn(8, 4)
                return Line(), [(x, x.sum(1, keepdim=True))]

            def wrong():
                return torch.nn.Linear(4, 1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _bench("--model", "my_bench_models:build", "--precision", "32-true")
    assert data["results"][0]["error"] is None and data["recommendation"]["precision"] == "32-true"

    result = CliRunner().invoke(main, ["bench", "--model", "my_bench_models:wrong", *FAST])
    assert result.exit_code == 2 and "must return (prec.TrainingModule, list_of_batches)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mlp-huge"], "neither a built-in model"),
        (["--model", "no_such_module_xyz:build"], "cannot be loaded"),
        (["--precision", "16-mixed"], "is not supported on accelerator 'cpu'"),
        (["--precision", "bf17"], "not a precision name"),
        (["--accelerator", "quantum"], "not installed"),
        (["--steps", "1"], "--steps must be >= 2"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", *args, "--repeats", "1", "--no-progress"])  # fails before running
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_resolve_model_rejects_non_callables() -> None:
    with pytest.raises(ConfigurationError, match="not a callable factory"):
        resolve_model("math:pi")


def _row(name: str, speed: float, loss: float, low: float | None = None, high: float | None = None) -> PrecisionResult:
    low = speed if low is None else low
    high = speed if high is None else high
    return PrecisionResult(name, steps_per_s=speed, steps_per_s_min=low, steps_per_s_max=high, final_loss=loss)


def test_recommend_picks_fastest_within_tolerance() -> None:
    rows = [_row("32-true", 100, 1.0), _row("bf16-mixed", 200, 1.01), _row("bf16-true", 400, 1.5)]
    choice = recommend(rows, tolerance=0.05, min_speedup=1.05)
    assert choice["precision"] == "bf16-mixed" and "2.00x" in choice["reason"]
    assert rows[2].loss_drift == pytest.approx(0.5) and rows[1].speedup_vs_32_true == pytest.approx(2.0)


def test_recommend_keeps_32_true_when_speedup_is_noise_or_nan() -> None:
    overlapping = [_row("32-true", 100, 1.0, 90, 120), _row("bf16-mixed", 110, 1.0, 95, 125)]
    assert recommend(overlapping, 0.05, 1.05)["precision"] == "32-true"
    diverged = [_row("32-true", 100, 1.0), _row("16-true", 300, float("nan"))]
    assert recommend(diverged, 0.05, 1.05)["precision"] == "32-true"
    assert recommend([_row("bf16-mixed", 100, 1.0)], 0.05, 1.05)["precision"] is None


def test_recommend_never_picks_a_true_precision_unless_asked() -> None:
    rows = [_row("32-true", 100.0, 1.0), _row("bf16-true", 300.0, 1.0), _row("bf16-mixed", 130.0, 1.0)]
    assert recommend(rows, 0.05, 1.05)["precision"] == "bf16-mixed"
    assert recommend(rows, 0.05, 1.05, allowed_true=["bf16-true"])["precision"] == "bf16-true"


def test_noise_is_reported() -> None:
    from prec.cli.bench import noise

    steady = PrecisionResult("32-true", steps_per_s=100.0, rounds=[99.0, 100.0, 101.0])
    shaky = PrecisionResult("bf16-mixed", steps_per_s=100.0, rounds=[60.0, 100.0, 140.0])
    assert noise([steady])["noisy"] is False
    report = noise([steady, shaky])
    assert report["noisy"] and "bf16-mixed" in report["reason"]
    assert noise([PrecisionResult("32-true", steps_per_s=1.0, rounds=[1.0])])["noisy"]


def test_time_limit_stops_after_the_first_round() -> None:
    args = ["bench", "--precision", "32-true", "--steps", "2", "--warmup", "1", "--repeats", "50"]
    result = CliRunner().invoke(main, [*args, "--time-limit", "0.001", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["time_limited"] is True and data["time_limit"] == 0.001
    assert len(data["results"][0]["rounds"]) < 50
    assert data["noise"]["noisy"] in (True, False)
