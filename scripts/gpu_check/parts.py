"""Running the parts of a check: each under its own time limit inside one overall budget, each whatever the
others did, its output streamed to the terminal and a log, and a summary at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

#: Seconds ``timeout`` waits after its TERM before it KILLs a part that does not stop.
KILL_AFTER_S = 10


@dataclass
class Outcome:
    name: str
    status: str  # "passed", "failed", "timed out", "skipped" (nothing to do here), "not run" (no time left)
    seconds: float
    detail: str = ""


class Parts:
    """The parts of one check and what became of each. ``budget_s`` bounds them all together: a part gets its
    own limit or what is left of the budget, whichever is less."""

    def __init__(self, title: str, budget_s: float, log: Path | None = None) -> None:
        self.title = title
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        self.outcomes: list[Outcome] = []
        self.log: IO[str] | None = log.open("w", encoding="utf-8") if log else None

    def say(self, text: str) -> None:
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    def _left(self, limit_s: float) -> float:
        return min(limit_s, self.deadline - time.monotonic())

    def command(self, name: str, argv: list[str], limit_s: float, *, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> Outcome:  # fmt: skip
        """Run ``argv`` under coreutils ``timeout``, which signals the part's whole process group (torchrun's
        workers too) when its time is up."""
        left = self._left(limit_s)
        self.say(f"\n== {name} (at most {max(left, 0):.0f} s)\n$ {' '.join(argv)}")
        if left < 5:
            return self._record(Outcome(name, "not run", 0.0, "no time left in the overall budget"))
        timeout = shutil.which("timeout")
        wrapped = [timeout, "-k", str(KILL_AFTER_S), f"{left:.0f}", *argv] if timeout else argv
        start = time.monotonic()
        process = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if self.log:
                self.log.write(line)
        code = process.wait()
        seconds = time.monotonic() - start
        if code in (124, 137) or (not timeout and seconds >= left):
            return self._record(Outcome(name, "timed out", seconds, f"stopped after {left:.0f} s"))
        status = "passed" if code == 0 else "failed"
        return self._record(Outcome(name, status, seconds, "" if code == 0 else f"exit status {code}"))

    def call(self, name: str, function: Callable[[], str | None]) -> Outcome:
        """Run ``function`` in this process: its return value is a detail to report, an exception a failure."""
        self.say(f"\n== {name}")
        start = time.monotonic()
        try:
            detail = function() or ""
        except Exception as error:  # noqa: BLE001 - a failed part is reported; the next part still runs
            return self._record(Outcome(name, "failed", time.monotonic() - start, f"{type(error).__name__}: {error}"))
        return self._record(Outcome(name, "passed", time.monotonic() - start, detail))

    def skip(self, name: str, why: str) -> Outcome:
        self.say(f"\n== {name}: skipped, {why}")
        return self._record(Outcome(name, "skipped", 0.0, why))

    def _record(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        if outcome.status not in ("passed", "skipped"):
            self.say(f"-- {outcome.name}: {outcome.status.upper()} {outcome.detail}")
        return outcome

    @property
    def failed(self) -> bool:
        return any(outcome.status not in ("passed", "skipped") for outcome in self.outcomes)

    def summary(self, extra: dict[str, Any] | None = None, path: Path | None = None) -> int:
        """Print the summary, write it as JSON to ``path`` if given; the exit status: 1 if any part failed."""
        total = time.monotonic() - self.started
        width = max((len(outcome.name) for outcome in self.outcomes), default=4)
        self.say(f"\n== summary: {self.title} ({total:.0f} s)")
        for outcome in self.outcomes:
            detail = f"  {outcome.detail}" if outcome.detail else ""
            self.say(f"  {outcome.name:<{width}}  {outcome.status:<9}  {outcome.seconds:6.1f} s{detail}")
        verdict = "FAILED" if self.failed else "all passed"
        self.say(f"  => {verdict}")
        if path is not None:
            record = {"title": self.title, "seconds": total, "ok": not self.failed, **(extra or {}),
                      "parts": [asdict(outcome) for outcome in self.outcomes]}  # fmt: skip
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if self.log:
            self.log.close()
            self.log = None
        return 1 if self.failed else 0


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment without what would let another Python installation leak in (PYTHONPATH, a virtual
    environment, pip's configuration from variables), plus ``extra``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("PIP_")}  # fmt: skip
    env.update(extra)
    return env
