"""scripts/gpu-check: the offline install proven on this machine (its dry run), the pieces the GPU run is built
from (the wheel folder's rules, the one-device DDP/FSDP checks on gloo), and the run refusing a machine without
a GPU. The GPU run itself needs the lent machine; nothing here pretends to be one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _modules import load_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
HELPERS = ROOT / "scripts" / "gpu_check"
#: A hang guard, not an expectation: the dry run installs a torch wheel and trains on a shared 2-core machine.
DRY_RUN_TIMEOUT_S = 1500


def helper(name: str) -> ModuleType:
    sys.path.insert(0, str(HELPERS))  # the helpers import one another as siblings, as they do when run
    try:
        return load_module(HELPERS / f"{name}.py", f"_gpu_check_{name}")
    finally:
        sys.path.remove(str(HELPERS))


def gpu_check(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=ROOT)  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One dry run for the module: prec's own wheels into a temporary folder, results into another."""
    wheels, out = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("results")
    done = gpu_check("dry-run", "--prec-only", "--wheels", str(wheels), "--out", str(out), timeout=DRY_RUN_TIMEOUT_S)
    if "SKIPPED:" in done.stdout:
        pytest.skip(done.stdout.split("SKIPPED:", 1)[1].splitlines()[0])
    return done, wheels, out


def test_help_names_the_commands_and_the_device_call() -> None:
    done = gpu_check("--help", timeout=60)
    assert done.returncode == 0, done.stderr
    for text in ("prepare", "run", "dry-run", 'run(command="bash scripts/gpu-check run", carry=[".gpu-wheels"]'):
        assert text in done.stdout
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.slow
def test_dry_run_installs_offline_and_every_part_passes(dry_run: tuple[subprocess.CompletedProcess[str], Path, Path]):
    done, wheels, _ = dry_run
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    summary = done.stdout.split("== summary: gpu-check dry-run", 1)[1]
    for part in ("prepare wheels", "offline", "install wheels", "prec list", "every prec package imports",
                 "transformer step benchmark on the cpu"):  # fmt: skip
        assert part in summary
    assert "=> all passed" in summary
    manifest = json.loads((wheels / "manifest.json").read_text())
    expected = {"prec-core"} | {
        path.parent.name for path in ROOT.glob("plugins/*/pyproject.toml") if path.parent.name != "prec-example-cpu16"
    }
    assert {entry["name"] for entry in manifest["packages"]} == expected
    assert manifest["third_party"] == []  # --prec-only: nothing downloaded
    assert "/site/prec" in done.stdout  # the import check saw prec in the installed wheels, not in the source tree


@pytest.mark.slow
def test_dry_run_benchmark_writes_json_and_markdown(dry_run: tuple[subprocess.CompletedProcess[str], Path, Path]):
    _, _, out = dry_run
    record = json.loads((out / "step_bench_cpu.json").read_text())
    measured = {row["mode"]: row for row in record["results"]}
    for mode in ("32-true", "bf16-mixed", "bf16-true", "bf16-true master_weights=fp32",
                 "bf16-true master_weights=kahan", "bf16-true master_weights=stochastic"):  # fmt: skip
        assert measured[mode]["prec"]["step_ms"] > 0
    assert measured["bf16-mixed"]["raw"]["step_ms"] > 0 and measured["bf16-true master_weights=kahan"]["raw"] is None
    assert {item["mode"] for item in record["skipped"]} >= {"16-mixed"}  # a GPU precision: not offered on the cpu
    assert record["errors"] == [] and record["device"] == "cpu" and record["sync_counter_verified"] is False
    table = (out / "step_bench_cpu.md").read_text()
    assert table.startswith("# Transformer training step on cpu") and "| bf16-true master_weights=kahan |" in table


@pytest.mark.slow
def test_prepare_reuses_unchanged_wheels(tmp_path: Path) -> None:
    first = gpu_check("prepare", "--prec-only", "--wheels", str(tmp_path), timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.whl")}
    second = gpu_check("prepare", "--prec-only", "--wheels", str(tmp_path), timeout=300)
    assert second.returncode == 0, second.stdout[-3000:]
    assert f"prec wheels: 0 built, {len(before)} reused" in second.stdout, second.stdout[-1500:]
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.whl")} == before


@pytest.mark.slow
def test_run_without_a_gpu_installs_then_stops_with_a_summary(
    dry_run: tuple[subprocess.CompletedProcess[str], Path, Path], tmp_path: Path
) -> None:
    _, wheels, _ = dry_run
    done = gpu_check("run", "--wheels", str(wheels), timeout=600, env={"OUT": str(tmp_path)})
    assert done.returncode == 1
    assert "no CUDA GPU here" in done.stdout
    summary = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    statuses = {part["name"]: part["status"] for part in summary["parts"]}
    assert statuses == {"install wheels": "passed", "environment": "failed"}
    assert (tmp_path / "gpu_check.log").read_text().count("== environment") == 1


def test_the_wheels_and_the_tree_must_fit_what_travels() -> None:
    wheelhouse = helper("wheelhouse")
    wheelhouse.check_budget(wheelhouse.Manifest(wheel_bytes=40 * 2**20, tree_bytes=3 * 2**20))
    with pytest.raises(wheelhouse.WheelhouseError, match="over the 64 MiB"):
        wheelhouse.check_budget(wheelhouse.Manifest(wheel_bytes=62 * 2**20, tree_bytes=3 * 2**20))


def test_every_plugin_but_the_example_travels_and_the_pins_fit_the_plugins() -> None:
    wheelhouse = helper("wheelhouse")
    names = [name for name, _ in wheelhouse.prec_packages(ROOT)]
    assert names[0] == "prec-core" and "prec-example-cpu16" not in names
    assert len(names) == len(list(ROOT.glob("plugins/*/pyproject.toml")))  # the example out, prec-core in
    wheelhouse.check_pin(ROOT, "torchao", wheelhouse.TORCHAO)
    with pytest.raises(wheelhouse.WheelhouseError, match="update the pin"):
        wheelhouse.check_pin(ROOT, "torchao", "0.1.0")


def test_the_offline_environment_gets_what_the_gpu_image_has() -> None:
    offline_env, wheelhouse = helper("offline_env"), helper("wheelhouse")
    folders = [folder for _, folder in wheelhouse.prec_packages(ROOT)]
    requirements = offline_env.base_requirements(folders, {"torchao", "bitsandbytes"})
    names = [requirement.split(">")[0].split("=")[0] for requirement in requirements]
    assert requirements[0] == f"torch=={offline_env.TORCH}"
    assert {"numpy", "pluggy", "click", "tqdm"} <= set(names)
    assert not any(name.startswith("prec") or name in ("torchao", "bitsandbytes", "torch") for name in names[1:])
    assert offline_env.LocalSources([Path("/w")]).pip_arguments() == ["--no-index", "--find-links", "/w"]


@pytest.mark.slow
def test_one_device_distributed_checks_pass_on_gloo(tmp_path: Path) -> None:
    """The checks the GPU run makes on nccl, here on one cpu process with gloo."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               str(HELPERS / "ddp_one_gpu.py"), "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_one_gpu.json").read_text())
    assert report["backend"] == "gloo" and report["world_size"] == 1
    assert report["ok"] and len(report["checks"]) == 7 and report["ddp_vs_single_bit_identical"]
