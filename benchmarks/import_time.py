"""Start-up cost: ``prec list`` against ``python -c "import torch"``, and what ``import prec`` loads.

    python benchmarks/import_time.py [--rounds 10]

Each command runs in a fresh interpreter; the commands are interleaved in rounds (order rotating) so load from
other processes hits them alike. Reports the median wall time, min–max and the ratio to ``import torch``
(target: ``prec list`` <= 1.10x). Also records which modules ``import prec`` and ``import prec.cli.app`` pull in
(target: no plugin, and no torch). Writes results/import_time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Summary, has_lightning, machine, table, write_results

LIST_TARGET = 1.10
PROBE = (
    "import json, sys; import {module}; "
    "print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules if m.split('.')[0] in {roots}}})))"
)


def commands() -> dict[str, list[str]]:
    python = sys.executable
    script = shutil.which("prec", path=str(Path(python).parent)) or shutil.which("prec")
    found = {
        "import torch": [python, "-c", "import torch"],
        "prec list": [script, "list"] if script else [python, "-m", "prec.cli.app", "list"],
        "import prec": [python, "-c", "import prec"],
    }
    if has_lightning():
        found["import lightning.pytorch"] = [python, "-c", "import lightning.pytorch"]
    return found


def time_commands(cases: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    for name in names:  # one untimed run each: byte-code caches and the page cache are warm for every round
        subprocess.run(cases[name], check=True, capture_output=True, env=environment)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            subprocess.run(cases[name], check=True, capture_output=True, env=environment)
            samples[name].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


def imported_by(module: str) -> list[str]:
    """Top-level packages among torch, prec's plugins and Lightning that importing ``module`` loads."""
    roots = {"torch", "lightning", "pluggy", "tqdm"} | set(_plugin_modules())
    code = PROBE.format(module=module, roots=sorted(roots))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _plugin_modules() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({entry.value.split(":")[0].split(".")[0] for entry in entry_points(group="prec")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    cases = commands()
    samples = time_commands(cases, args.rounds)
    torch_median = statistics.median(samples["import torch"])
    results = []
    for name, values in samples.items():
        summary = Summary.of(values)
        paired = [value / base for value, base in zip(values, samples["import torch"], strict=True)]
        results.append(
            {
                "command": " ".join(Path(part).name if index == 0 else part for index, part in enumerate(cases[name])),
                "case": name,
                "seconds": summary.as_dict(),
                "ratio_to_import_torch": summary.median / torch_median,
                "paired_ratio_median": statistics.median(paired),
            }
        )
    modules = {module: imported_by(module) for module in ("prec", "prec.cli.app")}
    plugins = _plugin_modules()
    checks = {
        "prec_list_ratio": next(r["ratio_to_import_torch"] for r in results if r["case"] == "prec list"),
        "import_prec_loads_no_plugin": not set(modules["prec"]) & set(plugins),
        "import_prec_loads_no_torch": "torch" not in modules["prec"],
        "import_prec_cli_loads_no_torch": "torch" not in modules["prec.cli.app"],
    }
    data = {"rounds": args.rounds, "machine": machine(), "results": results, "imports": modules, "checks": checks}
    rows = [
        [
            f"`{r['command']}`",
            f"{r['seconds']['median']:.3f}",
            f"{r['seconds']['min']:.3f}–{r['seconds']['max']:.3f}",
            f"{r['ratio_to_import_torch']:.3f}",
            f"{r['paired_ratio_median']:.3f}",
        ]
        for r in results
    ]
    ratio = checks["prec_list_ratio"]
    markdown = "\n".join(
        [
            "### Start-up time (fresh interpreter per run)",
            "",
            f"{args.rounds} interleaved rounds; {data['machine'].get('cpu')}, {data['machine']['cpu_count']} cores.",
            "",
            table(["command", "median s", "min–max s", "vs import torch", "paired ratio (median)"], rows),
            "",
            f"- `prec list` / `import torch`: {ratio:.3f} (target <= {LIST_TARGET}:"
            f" {'met' if ratio <= LIST_TARGET else '**missed**'})",
            f"- `import prec` loads: {', '.join(modules['prec']) or 'none of torch, plugins, pluggy, tqdm'}"
            f" (plugins installed: {', '.join(plugins)})",
            f"- `import prec.cli.app` loads: "
            f"{', '.join(modules['prec.cli.app']) or 'none of torch, plugins, pluggy, tqdm'}",
        ]
    )
    path = write_results("import_time", data, markdown)
    print(markdown)
    print(f"\nwritten: {path} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
