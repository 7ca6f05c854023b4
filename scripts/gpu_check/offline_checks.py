"""Checks of an offline install, run by the interpreter under test with the wheels' target on PYTHONPATH.

python offline_checks.py imports TARGET MODULE...        every module imports, from TARGET
python offline_checks.py list TARGET DISTRIBUTION...     ``prec list`` finds every distribution through its
                                                         entry point, each plugin loads, cpu pairs are listed
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

#: Precisions every installation offers on the cpu (prec-cpu's own pairs).
CPU_PAIRS = ("32-true", "bf16-mixed", "bf16-true")


def check_imports(target: Path, modules: list[str]) -> list[str]:
    problems = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - every failing module is named, not only the first
            problems.append(f"import {name}: {type(error).__name__}: {error}")
            continue
        location = Path(module.__file__ or "").resolve()
        if target.resolve() not in location.parents:
            problems.append(f"{name} was imported from {location}, not from the installed wheels in {target}")
        else:
            print(f"  {name}: {location.parent}")
    return problems


def check_list(target: Path, distributions: list[str]) -> list[str]:
    command = [sys.executable, "-m", "prec", "list"]
    shown = subprocess.run(command, capture_output=True, text=True)
    print(shown.stdout + shown.stderr)
    listed = subprocess.run([*command, "--json"], capture_output=True, text=True)
    if shown.returncode or listed.returncode:
        return [f"prec list exited with {shown.returncode}, prec list --json with {listed.returncode}"]
    data = json.loads(listed.stdout)
    problems = [f"{name} is not listed on the cpu" for name in CPU_PAIRS if "cpu" not in data["matrix"].get(name, [])]
    found = data["environment"]["plugins"]
    problems += [f"{name} was not discovered (no entry point found)" for name in distributions if name not in found]
    problems += [f"plugin {entry['name']} ({entry['distribution']}): {entry['status']}: {entry['error']}"
                 for entry in data["plugins"] if entry["status"] != "ok"]  # fmt: skip
    return problems


def main(argv: list[str]) -> int:
    what, target, *names = argv
    problems = (check_imports if what == "imports" else check_list)(Path(target), names)
    for problem in problems:
        print(f"  FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
