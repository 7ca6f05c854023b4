"""Where a rank was: the Python stack of a process that is alive but silent.

A rank that hangs without failing (a deadlock, an endless loop, a blocked read, a ``sleep`` left in a step) makes
the others wait in a collective until the strategy's ``timeout``; then only the waiting ranks fail, and nothing
names the one that stopped. A process prec's launcher started therefore asks :mod:`faulthandler` to write every
thread's stack to a file beside its error file on :data:`DUMP_SIGNAL`; when rank 0 fails, it signals the started
processes that are still running without having reported an error and prints where each one's main thread was.
Nothing runs per step: the handler is C code in the interpreter, armed once per process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO

__all__ = ["DUMP_SIGNAL", "arm_stack_dump", "main_thread_stack", "request_stacks", "stack_path"]

#: The signal that asks a started process for its stacks: SIGUSR2 (SIGUSR1 is SLURM's requeue signal, which
#: Lightning and others listen to); ``None`` where the platform has no such signal.
DUMP_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR2", None)
#: How long rank 0 waits for the stacks it asked for.
STACK_WAIT_S = 3.0
_HEADER = "main thread 0x{:016x}\n"
_armed: IO[str] | None = None


def stack_path(error_file: str | os.PathLike[str]) -> Path:
    """Where the process whose error file is ``error_file`` writes its stacks."""
    return Path(error_file).with_suffix(".stack")


def arm_stack_dump(error_file: str | os.PathLike[str]) -> bool:
    """In a process prec started: write every thread's stack to :func:`stack_path` on :data:`DUMP_SIGNAL`, once
    per process. A handler the program installed for that signal itself is left alone (then ``False``)."""
    global _armed
    if _armed is not None:
        return True
    if DUMP_SIGNAL is None or signal.getsignal(DUMP_SIGNAL) not in (signal.SIG_DFL, None):
        return False
    try:
        handle = stack_path(error_file).open("w", encoding="utf-8")
        handle.write(_HEADER.format(threading.main_thread().ident or 0))
        handle.flush()
        faulthandler.register(DUMP_SIGNAL, file=handle, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):
        return False
    _armed = handle
    return True


def request_stacks(pids: dict[int, int], stack_files: dict[int, Path]) -> dict[int, str]:
    """Signal each rank in ``pids`` (rank -> pid) that armed its dump and return its main thread's stack, as
    faulthandler wrote it (the whole dump when the main thread cannot be told apart)."""
    asked: dict[int, Path] = {}
    for rank, pid in pids.items():
        path = stack_files[rank]
        if DUMP_SIGNAL is None or not path.is_file():
            continue  # not armed yet: the signal's default action would kill it
        with contextlib.suppress(OSError):
            os.kill(pid, DUMP_SIGNAL)
            asked[rank] = path
    deadline = time.monotonic() + STACK_WAIT_S
    stacks: dict[int, str] = {}
    for rank, path in asked.items():
        text = _read_settled(path, deadline)
        if text:
            stacks[rank] = _main_thread_part(text)
    return stacks


def _read_settled(path: Path, deadline: float) -> str:
    """The file's dump once it stops growing (faulthandler writes it from a signal handler, line by line)."""
    previous = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8", errors="replace")
            if "(most recent call first)" in text and text == previous:
                return text
            previous = text
        time.sleep(0.1)
    return previous if "(most recent call first)" in previous else ""


def _main_thread_part(text: str) -> str:
    header, _, dump = text.partition("\n")
    match = re.fullmatch(r"main thread (0x[0-9a-f]+)", header.strip())
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump.strip())
    if match is not None:
        for block in blocks:
            if re.match(rf"(?:Current thread|Thread) {match.group(1)}\b", block):
                return block.strip()
    return dump.strip()


def main_thread_stack() -> str:
    """This process's main-thread stack, formatted as a traceback (rank 0's, when a watchdog thread stops it)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    return "".join(traceback.format_stack(frame)).rstrip() if frame is not None else "(no stack)"
