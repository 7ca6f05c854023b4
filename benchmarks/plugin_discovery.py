"""What discovering installed plugins costs, with 0 and with N generated plugin distributions installed.

python benchmarks/plugin_discovery.py [--plugins 100] [--repeats 5]

Generates N plugin packages (each registers one accelerator and one precision on it), pip-installs them into a
throwaway venv layered over the current environment (prec.testing.Sandbox), and measures in fresh processes:
the entry-point scan, registry construction (scan + import + hooks + conflict rule, torch already imported),
a rebuild after ``register_plugin`` (no rescan), and the wall time of ``prec list --json``. The same runs in an
empty sandbox give the baseline. Figures are the best of ``--repeats`` fresh processes (the least disturbed by
other load on the machine); ``*_cpu_ms`` is the process CPU time of the same step, which load inflates far
less than wall time. Writes benchmarks/results/plugin_discovery.json. The target: registry construction
under 100 ms with 100 plugins.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from prec.testing import Sandbox, write_plugin_package

PLUGIN = """
import prec


class BenchAccelerator(prec.Accelerator):
    name = "bench{index:03d}"
    device_type = "cpu"

    def availability(self):
        return prec.Availability(True)

    def device_count(self):
        return 1


@prec.hookimpl
def prec_register_accelerators(register):
    register(BenchAccelerator)


@prec.hookimpl
def prec_register_precisions(register):
    register("32-true", "bench{index:03d}", lambda accelerator: prec.Precision())
"""

MEASURE = r"""
import json, time
from importlib.metadata import distributions, entry_points
import torch, prec, prec.accelerator, prec.strategies.base, prec.precision  # imported before any timing
from prec.plugin import manager as plugins

def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, 1e3 * (time.perf_counter() - wall), 1e3 * (time.process_time() - cpu)

dists = sum(1 for _ in distributions())
points, scan, scan_cpu = timed(plugins._entry_points)
plugins.reset_registry()
registry, build, build_cpu = timed(prec.get_registry)
prec.register_plugin(object(), name="benchmark-probe")
_, rebuild, rebuild_cpu = timed(prec.get_registry)
print(json.dumps({
    "distributions": dists, "entry_points": len(points), "plugins_ok": sum(
        info.status == "ok" for info in registry.plugins.values()), "accelerators": len(registry.accelerators),
    "entry_point_scan_ms": scan, "entry_point_scan_cpu_ms": scan_cpu,
    "registry_build_ms": build, "registry_build_cpu_ms": build_cpu,
    "registry_rebuild_after_register_plugin_ms": rebuild, "registry_rebuild_after_register_plugin_cpu_ms": rebuild_cpu,
}))
"""


def measure(sandbox: Sandbox, repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        result = sandbox.run("-c", MEASURE)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    best["per_distribution_scan_us"] = 1e3 * best["entry_point_scan_ms"] / best["distributions"]
    best["per_distribution_scan_cpu_us"] = 1e3 * best["entry_point_scan_cpu_ms"] / best["distributions"]
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = sandbox.prec("list", "--json")
        walls.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
    best["prec_list_json_wall_ms"] = 1e3 * min(walls)
    start = time.perf_counter()
    sandbox.run("-c", "import torch, prec.cli.app")
    best["python_torch_prec_import_wall_ms"] = 1e3 * (time.perf_counter() - start)
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "plugin_discovery.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prec-discovery-") as tmp:
        root = Path(tmp)
        empty = Sandbox.create(root / "empty")
        full = Sandbox.create(root / "full")
        projects = [
            write_plugin_package(root / "src", f"prec-bench-{index:03d}", PLUGIN.format(index=index))
            for index in range(args.plugins)
        ]
        start = time.perf_counter()
        full.install(*projects)
        install_s = time.perf_counter() - start
        baseline = measure(empty, args.repeats)
        loaded = measure(full, args.repeats)
    results = {
        "benchmark": "plugin_discovery",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "repeats": args.repeats,
        "generated_plugins": args.plugins,
        "pip_install_s": round(install_s, 1),
        "baseline": baseline,
        f"with_{args.plugins}_plugins": loaded,
        "added_by_plugins_ms": {
            key: round(loaded[key] - baseline[key], 3)
            for key in ("entry_point_scan_ms", "registry_build_ms", "registry_build_cpu_ms", "prec_list_json_wall_ms")
        },
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "target_registry_build_under_100_ms": loaded["registry_build_ms"] < 100,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
