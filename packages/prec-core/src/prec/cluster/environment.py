"""Where this process sits in a job, and how a plain script becomes N local processes.

prec speaks torch.distributed's own protocol: a launcher (``torchrun``, SLURM with the variables exported, or
prec itself) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and every
process joins the default process group through ``env://``.

Launched as a plain script with ``devices=N > 1``, prec does what Lightning's subprocess launcher does: the
calling process becomes rank 0 (so ``fit`` returns in it and its model is the trained one) and it re-runs the
same command line N-1 times with the variables set. The children run the whole script again, so it must be a
file or module (not ``python -c`` or a notebook) and must reach the same ``fit`` calls.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from prec.cluster.stacks import arm_stack_dump, main_thread_stack, request_stacks, stack_path
from prec.errors import ConfigurationError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Seconds rank 0 waits at exit for the processes it started before it stops them.
CHILD_EXIT_TIMEOUT_S = 300.0
#: Seconds rank 0 gets to leave a run by itself after a started process failed, before the watchdog stops it.
FAILURE_GRACE_S = 10.0
#: Seconds rank 0, failing, waits for a started process that failed too to exit by itself (1 s if none did).
SETTLE_S = 5.0


@dataclass(frozen=True)
class ProcessEnvironment:
    """This process's place in the job, as the launcher described it."""

    global_rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str = "127.0.0.1"
    master_port: int = 0


def launched_by_launcher() -> bool:
    """True when a launcher started this process (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def read_environment() -> ProcessEnvironment:
    """Read the standard variables; raise :class:`ConfigurationError` naming any that are missing or broken."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigurationError(
            f"this process was started by a launcher (RANK={os.environ.get('RANK')!r},"
            f" WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}) but {', '.join(missing)} is not set. torchrun sets all"
            f" of {', '.join(LAUNCH_VARIABLES)}; a custom launcher must too."
        )
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        global_rank = int(os.environ["RANK"])
        local_rank = int(os.environ["LOCAL_RANK"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        node_rank = int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", global_rank // local_world_size)))
        master_port = int(os.environ["MASTER_PORT"])
    except ValueError as error:
        raise ConfigurationError(f"a launcher variable is not an integer: {error}") from None
    master_addr = os.environ["MASTER_ADDR"]
    return ProcessEnvironment(
        global_rank, local_rank, world_size, local_world_size, node_rank, master_addr, master_port
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _script_command() -> list[str]:
    """The command line that re-runs this program, or a ConfigurationError when it cannot be re-run."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    if spec is not None and spec.name not in ("__main__",):
        if spec.name.split(".")[0] in ("pytest", "ipykernel", "IPython"):
            raise _cannot_rerun(f"python -m {spec.name}")
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    if argv0 in ("", "-c") or not os.path.isfile(argv0) or name.startswith(("pytest", "py.test", "ipython")):
        raise _cannot_rerun(argv0 or "an interactive session")
    return [sys.executable, os.path.abspath(argv0), *sys.argv[1:]]


def _cannot_rerun(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"devices > 1 starts the other processes by re-running this program, but it was started as {what!r},"
        " which cannot be re-run. Put the training code in a script (`python train.py`) or launch it with"
        " `torchrun --nproc_per_node N train.py`."
    )


#: Set in the processes prec starts: where a process writes its error, for rank 0 to report.
ERROR_FILE_VARIABLE = "PREC_ERROR_FILE"


class LocalLauncher:
    """Start ranks 1..N-1 of a one-node job as copies of this command; this process becomes rank 0.

    A watchdog thread stops the job when a started process fails while rank 0 is inside a run: rank 0 would
    otherwise wait for it in a collective (or in joining the group) until the timeout. After a failure rank 0
    gets :data:`FAILURE_GRACE_S` to leave the run by itself (it usually fails too, and reports why). A started
    process that fails writes its error to a file (``PREC_ERROR_FILE``), so rank 0 names the real error;
    processes rank 0 stops itself after its own failure are not reported as failures.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.processes: list[subprocess.Popen[bytes]] = []
        self.error_dir = tempfile.mkdtemp(prefix="prec-errors-")
        self._stopped: set[int] = set()  # ranks this process terminated
        self._reported: set[int] = set()
        self._runs = 0
        self._lock = threading.Lock()

    @contextmanager
    def run(self) -> Iterator[None]:
        """Mark rank 0 as inside a run (where it may wait for the others)."""
        with self._lock:
            self._runs += 1
        try:
            yield
        except BaseException:
            self._settle()
            self.report_failures()  # a rank that failed first explains rank 0's own error
            self.report_silent()  # a rank that hangs without failing is why rank 0 timed out in a collective
            self.kill()  # rank 0 failed: the others would wait for it until the timeout
            raise
        finally:
            with self._lock:
                self._runs -= 1

    def _in_run(self) -> bool:
        with self._lock:
            return self._runs > 0

    def error_of(self, rank: int) -> str | None:
        """What rank ``rank`` wrote about its failure, if it wrote anything."""
        try:
            text = self._error_file(rank).read_text().strip()
        except OSError:
            return None
        return text or None

    def _describe(self, rank: int, code: int | None) -> str:
        error = self.error_of(rank)
        if error is not None:
            return f"rank {rank} failed: {error}"
        return f"rank {rank} exited with status {code}"

    def _settle(self, seconds: float = SETTLE_S) -> None:
        """After rank 0 failed: give a rank that failed too (it wrote its error) time to exit by itself, so it
        is reported with its own error instead of being stopped (rank 0's error may be only the echo of its)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            running = [rank for rank, p in enumerate(self.processes, start=1) if p.poll() is None]
            if not running or (time.monotonic() > deadline - seconds + 1 and not any(map(self.error_of, running))):
                return
            time.sleep(0.1)

    def report_failures(self) -> None:
        """Print, once each, the ranks that failed by themselves (not stopped by this process)."""
        for rank, process in enumerate(self.processes, start=1):
            code = process.poll()
            failed = code not in (None, 0) or (code is None and self.error_of(rank) is not None)
            if failed and rank not in self._stopped and rank not in self._reported:
                self._reported.add(rank)
                print(f"prec: {self._describe(rank, code)}", file=sys.stderr, flush=True)

    def report_silent(self) -> None:
        """Print where each started rank that is still running, and reported no error, was (its main thread's
        stack, :mod:`prec.cluster.stacks`): a rank that hangs without failing is otherwise never named."""
        silent = {
            rank: process.pid
            for rank, process in enumerate(self.processes, start=1)
            if process.poll() is None and rank not in self._stopped and self.error_of(rank) is None
        }
        if not silent:
            return
        files = {rank: stack_path(self._error_file(rank)) for rank in silent}
        stacks = request_stacks(silent, files)
        for rank in silent:
            where = stacks.get(rank, "(it did not answer with its stack)")
            print(
                f"prec: rank {rank} was still running and reported no error; rank 0 may have waited for it in a"
                f" collective until the strategy's timeout. Where rank {rank} was:\n{where}",
                file=sys.stderr,
                flush=True,
            )

    def _error_file(self, rank: int) -> Path:
        return Path(self.error_dir) / f"rank{rank}.txt"

    def _watch(self) -> None:
        while True:
            codes = [process.poll() for process in self.processes]
            failed = [
                (rank, code)
                for rank, code in enumerate(codes, start=1)
                if code not in (None, 0) and rank not in self._stopped
            ]
            if failed and self._in_run():
                deadline = time.monotonic() + FAILURE_GRACE_S
                while self._in_run() and time.monotonic() < deadline:
                    time.sleep(0.2)
                if self._in_run():
                    rank, code = failed[0]
                    self._reported.add(rank)
                    print(
                        f"prec: {self._describe(rank, code)} while rank 0 waits for it; stopping the job."
                        f" Rank 0 was at:\n{main_thread_stack()}",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.kill()
                    os._exit(1)
            if not failed and all(code is not None for code in codes):
                return  # every started process finished
            time.sleep(0.5)

    def start(self) -> None:
        command = _script_command()
        # A port the user chose (a firewall rule) is kept, as in Lightning; otherwise a free one.
        port = os.environ.get("MASTER_PORT") or str(free_port())
        shared = {
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": port,
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.world_size),
            "NODE_RANK": "0",
            "GROUP_RANK": "0",
        }
        for rank in range(1, self.world_size):
            error_file = str(self._error_file(rank))
            env = {**os.environ, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank), ERROR_FILE_VARIABLE: error_file}
            self.processes.append(subprocess.Popen(command, env=env))  # noqa: S603 - this program, re-run
        # Rank 0 joins through the same variables; later Trainers in this process see a launched job and join.
        os.environ.update({**shared, "RANK": "0", "LOCAL_RANK": "0"})
        atexit.register(self.wait)
        global _active
        _active = self
        threading.Thread(target=self._watch, name="prec-launcher-watchdog", daemon=True).start()

    def kill(self) -> None:
        """Stop the started processes (rank 0 failed: they would wait for it until the timeout)."""
        for rank, process in enumerate(self.processes, start=1):
            if process.poll() is None:
                self._stopped.add(rank)
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self, timeout: float = CHILD_EXIT_TIMEOUT_S) -> list[int]:
        """Wait for the started processes at exit; stop those still running after ``timeout`` seconds."""
        codes: list[int] = []
        for rank, process in enumerate(self.processes, start=1):
            try:
                codes.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                self._stopped.add(rank)
                process.kill()
                codes.append(process.wait())
                print(f"prec: rank {rank} did not exit {timeout:.0f} s after rank 0 and was stopped.", file=sys.stderr)
        self.report_failures()
        shutil.rmtree(self.error_dir, ignore_errors=True)
        return codes


_active: LocalLauncher | None = None


def wait_for_started_processes() -> None:
    """In rank 0 of a job this process started: wait for the other ranks to exit (stopping any still running
    after :data:`CHILD_EXIT_TIMEOUT_S`). Rank 0 hosts the store the others talk to while their process groups shut
    down, so it closes its own only after they are gone: a store that vanishes under a rank still shutting down
    aborts that rank ("terminate called without an active exception"). Elsewhere nothing to do."""
    if _active is not None:
        _active.wait()


@contextmanager
def _record_failure(path: str) -> Iterator[None]:
    """In a process prec started: write the error that ends a run where rank 0 reads it."""
    try:
        yield
    except BaseException as error:
        if not isinstance(error, (KeyboardInterrupt, SystemExit)):
            with contextlib.suppress(OSError):
                Path(path).write_text(summarise(error))
        raise


@contextmanager
def _record_for_torchrun() -> Iterator[None]:
    """Under torchrun: write torch elastic's error file, so its summary shows this error, not just an exit code."""
    try:
        yield
    except Exception as error:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        with contextlib.suppress(Exception):
            get_error_handler().record_exception(error)
        raise


def summarise(error: BaseException) -> str:
    """``Type: first line of the message`` (the full traceback is printed by the failing process itself)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def launcher_run() -> AbstractContextManager[None]:
    """Context for a run: watched in rank 0 of a job this process started; in a process prec or torchrun
    started, its error is recorded for the launcher to report."""
    if _active is not None:
        return _active.run()
    error_file = os.environ.get(ERROR_FILE_VARIABLE)
    if error_file:
        arm_stack_dump(error_file)  # rank 0 asks for this process's stack if it fails while this one is silent
        return _record_failure(error_file)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return _record_for_torchrun()
    return nullcontext()
