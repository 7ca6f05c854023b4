"""`prec list`, `prec list --json` and `prec --version`, run as a user runs them (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import prec
import prec.names


def run_prec(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("prec") or ""
    command = [executable, *args] if executable else [sys.executable, "-m", "prec.cli.app", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def listing() -> dict[str, object]:
    result = run_prec("list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_schema(listing: dict[str, object]) -> None:
    assert {"plugins", "accelerators", "matrix"} <= set(listing)
    for plugin in listing["plugins"]:  # type: ignore[union-attr]
        assert {"name", "distribution", "version", "status", "error"} <= set(plugin)
        assert plugin["status"] in {"ok", "error", "disabled"}
    for accelerator in listing["accelerators"]:  # type: ignore[union-attr]
        assert {"name", "aliases", "available", "reason"} <= set(accelerator)
        assert isinstance(accelerator["available"], bool)
        assert (accelerator["reason"] is None) == accelerator["available"]
    assert all(isinstance(v, list) for v in listing["matrix"].values())  # type: ignore[union-attr]


def test_json_reports_prec_cpu(listing: dict[str, object]) -> None:
    plugins = {p["name"]: p for p in listing["plugins"]}  # type: ignore[union-attr]
    assert plugins["cpu"]["distribution"] == "prec-cpu" and plugins["cpu"]["status"] == "ok"
    assert plugins["cpu"]["version"] == prec.get_registry().plugins["cpu"].version
    cpu = next(a for a in listing["accelerators"] if a["name"] == "cpu")  # type: ignore[union-attr]
    assert cpu["available"] is True
    matrix = listing["matrix"]
    for name in ("32-true", "bf16-mixed", "bf16-true", "16-true"):
        assert "cpu" in matrix[name]  # type: ignore[index]
    assert "cpu" not in matrix.get("16-mixed", [])  # type: ignore[union-attr]


def test_table_output() -> None:
    result = run_prec("list")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Precisions" in out and "Accelerators" in out and "Plugins" in out
    assert "bf16-mixed" in out and "prec-cpu" in out


def test_version() -> None:
    result = run_prec("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"prec {prec.__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = run_prec("lsit")
    assert result.returncode == 2 and "No such command" in result.stderr


def test_import_prec_loads_no_plugin_and_builds_no_registry() -> None:
    code = (
        "import sys, prec; "
        "assert 'prec_cpu' not in sys.modules, 'plugin imported'; "
        "assert 'prec.trainer' not in sys.modules; "
        "import prec.plugin.manager as p; assert p._registry is None; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_python_dash_m_prec_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prec", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == f"prec {prec.__version__}", result.stderr


def test_json_has_a_schema_version_and_a_stable_plugin_order(listing: dict[str, object]) -> None:
    assert listing["schema_version"] == 2
    names = [plugin["name"] for plugin in listing["plugins"]]  # type: ignore[union-attr]
    assert names[0] == "prec.core" and names[1:] == sorted(names[1:], key=str.lower)
    environment = listing["environment"]
    assert {"prec", "torch", "cuda", "python", "platform", "native_bf16"} <= set(environment)  # type: ignore[arg-type]


def test_table_fits_80_columns_in_canonical_order_with_an_environment_line() -> None:
    out = run_prec("list").stdout
    assert all(len(line) <= 80 for line in out.splitlines()), max(out.splitlines(), key=len)
    environment = " ".join(out.split("\nEnvironment\n")[1].split())  # one line, wrapped to the width
    assert environment.startswith(f"prec {prec.__version__} | torch ") and "native bf16: cpu " in environment
    rows = [line.split()[0] for line in out.split("Precisions")[1].split("Accelerators")[0].splitlines()[3:] if line]
    canonical = [name for name in prec.names.CANONICAL_PRECISIONS if name in rows]
    assert rows[: len(canonical)] == canonical


def test_env_prints_what_a_bug_report_needs() -> None:
    result = run_prec("env")
    assert result.returncode == 0, result.stderr
    for key in ("prec:", "torch:", "cuda:", "python:", "platform:", "native_bf16:", "plugins:"):
        assert key in result.stdout
    assert json.loads(run_prec("env", "--json").stdout)["prec"] == prec.__version__


def test_without_a_backend_prec_list_says_what_to_install() -> None:
    env = {**os.environ, "PREC_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command = [sys.executable, "-m", "prec", "list"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "No backend" in result.stdout and "pip install prec-cpu" in result.stdout
