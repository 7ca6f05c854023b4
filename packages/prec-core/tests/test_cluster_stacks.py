"""Where a silent rank was: a real child process arms its stack dump and is asked for it by signal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prec.cluster.stacks import DUMP_SIGNAL, request_stacks, stack_path

pytestmark = pytest.mark.skipif(DUMP_SIGNAL is None, reason="the platform has no SIGUSR2")

CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    from prec.cluster.stacks import arm_stack_dump

    if sys.argv[2] == "own-handler":
        signal.signal(signal.SIGUSR2, lambda number, frame: print("own handler ran", flush=True))
    print("armed" if arm_stack_dump(sys.argv[1]) else "not armed", flush=True)
    threading.Thread(target=lambda: time.sleep(600), name="helper", daemon=True).start()

    def stuck_in_a_step():
        time.sleep(600)

    stuck_in_a_step()
    """
)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    error_file = tmp_path / "rank1.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(error_file), mode], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    first = child.stdout.readline().strip()
    assert first == ("armed" if mode == "default" else "not armed")
    return child, error_file


def test_a_silent_process_answers_with_its_main_thread_stack(tmp_path: Path) -> None:
    child, error_file = _start(tmp_path, "default")
    try:
        time.sleep(0.2)  # let it reach the sleep
        stacks = request_stacks({1: child.pid}, {1: stack_path(error_file)})
        assert child.poll() is None  # asked, not killed
    finally:
        child.kill()
        child.wait(timeout=60)
    where = stacks[1]
    assert "in stuck_in_a_step" in where and "<string>" in where
    assert where.count("(most recent call first)") == 1  # the main thread only, not the helper thread


def test_a_handler_the_program_installed_is_left_alone(tmp_path: Path) -> None:
    child, error_file = _start(tmp_path, "own-handler")
    try:
        assert not stack_path(error_file).exists()
        assert request_stacks({1: child.pid}, {1: stack_path(error_file)}) == {}  # never signalled
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=60)
