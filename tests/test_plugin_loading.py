"""Plugins that misbehave while loading, as installed packages in a sandbox, seen through the ``prec`` command:
one that hangs at import, one that prints, one that fails to import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from prec.testing import Sandbox, write_plugin_package

HANGS = "import time\ntime.sleep(3600)\n"
PRINTS = """
import prec

print("hello from a chatty plugin")


@prec.hookimpl
def prec_register_strategies(register):
    print("registering nothing, loudly")
"""
BROKEN = 'raise ImportError("prec-toy-broken needs libtoy.so")\n'


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("loading")
    projects = [
        write_plugin_package(root, "prec-toy-hangs", HANGS, entry_point="hangs"),
        write_plugin_package(root, "prec-toy-prints", PRINTS, entry_point="prints"),
        write_plugin_package(root, "prec-toy-broken", BROKEN, entry_point="broken"),
    ]
    environment = Sandbox.create(root / "venv")
    environment.install(*projects)
    return environment


def test_a_hanging_plugin_is_named_on_stderr_and_traced_before_loading(sandbox: Sandbox) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREC_")}
    environment.pop("PYTHONPATH", None)
    environment.update(PREC_SLOW_PLUGIN_SECONDS="0.5", PREC_TRACE_PLUGINS="1", PREC_LOAD_PLUGINS="hangs")
    process = subprocess.Popen(
        [str(sandbox.python), "-m", "prec", "list"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    guard = threading.Timer(240, process.kill)  # hang guard, far above the half second the message needs
    guard.start()
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "still importing" in line:
                break
    finally:
        process.kill()
        process.wait()
        guard.cancel()
    text = "".join(lines)
    assert "loading plugin 'hangs' from prec-toy-hangs" in text, text
    assert "still importing plugin 'hangs'" in lines[-1] and "PREC_DISABLED_PLUGINS=hangs" in lines[-1], text


def test_a_plugin_that_prints_does_not_break_the_json(sandbox: Sandbox) -> None:
    result = sandbox.prec("list", "--json", env={"PREC_LOAD_PLUGINS": "prints,cpu"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {plugin["name"]: plugin["status"] for plugin in data["plugins"]}["prints"] == "ok"
    assert "hello from a chatty plugin" in result.stderr and "registering nothing, loudly" in result.stderr


def test_check_fails_when_a_plugin_is_broken(sandbox: Sandbox) -> None:
    broken = sandbox.prec("list", "--check", env={"PREC_LOAD_PLUGINS": "broken,cpu"})
    assert broken.returncode == 1 and "prec: check failed: broken plugin(s): broken" in broken.stderr
    healthy = sandbox.prec("list", "--check", env={"PREC_LOAD_PLUGINS": "prints,cpu"})
    assert healthy.returncode == 0, healthy.stderr


def test_warnings_are_printed_by_the_cli(sandbox: Sandbox) -> None:
    result = sandbox.prec("list", env={"PREC_LOAD_PLUGINS": "broken,cpu"})
    assert result.returncode == 0
    warning = [line for line in result.stderr.splitlines() if "libtoy.so" in line]
    assert warning and warning[0].startswith("prec: warning: PluginWarning: prec plugin 'broken'"), result.stderr
    assert "click" not in result.stderr and "warnings.warn" not in result.stderr


def test_strict_mode_ends_in_one_line(sandbox: Sandbox) -> None:
    result = sandbox.prec("list", env={"PREC_LOAD_PLUGINS": "broken,cpu", "PREC_STRICT_PLUGINS": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("prec: error: prec plugin 'broken'"), result.stderr


def test_python_dash_m_prec_works(sandbox: Sandbox, tmp_path: Path) -> None:
    result = sandbox.run("-m", "prec", "--version")
    assert result.returncode == 0 and result.stdout.startswith("prec "), result.stderr


_WATCH = """
import io, os, sys, time
from prec.plugin._discovery import SlowPluginWatch
os.environ["PREC_SLOW_PLUGIN_SECONDS"] = sys.argv[1]
stream = io.StringIO()
watch = SlowPluginWatch(stream)
if sys.argv[2] == "torch":
    with watch.watch("cpu", "importing"):
        import torch  # the first import: far longer than the report's delay anywhere
        time.sleep(0.5)  # the timer thread gets its turn whatever the scheduler did
else:
    import torch
    with watch.watch("slow", "importing"):
        time.sleep(1.0)
print(stream.getvalue())
"""


def _watch_report(case: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _WATCH, "0.001" if case == "torch" else "0.05", case],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_slow_first_import_of_torch_is_named_as_torch_not_as_the_plugin() -> None:
    report = _watch_report("torch")
    assert "importing torch (first use, for plugin 'cpu')" in report, report
    assert "PREC_DISABLED_PLUGINS" not in report


def test_a_slow_plugin_is_still_named_when_torch_is_already_loaded() -> None:
    report = _watch_report("plugin")
    assert "still importing plugin 'slow'" in report and "PREC_DISABLED_PLUGINS=slow" in report, report
    assert "importing torch" not in report
