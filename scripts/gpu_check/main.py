"""scripts/gpu-check: prepare wheels here, check prec on a lent GPU machine there, prove the install offline.

See ``scripts/gpu-check --help``; the shell entry point only picks the interpreter and calls :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import offline_env
import wheelhouse
from parts import Parts, clean_environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
#: Everything ``run`` does must end within 8 minutes: the device tool's call is given 540 s.
RUN_BUDGET_S = 480
#: Each part's own limit inside that budget (seconds).
RUN_LIMITS = {"install": 45, "environment": 30, "tests": 170, "tf32": 40, "ddp": 75, "benchmark": 120}

USAGE = """\
scripts/gpu-check COMMAND [options]

  prepare   here: build a wheel of prec-core and of every plugin (plugins/*/pyproject.toml but the example),
            download the wheels the GPU machine lacks (torchao built for its torch 2.11; bitsandbytes when
            plugins/prec-bnb exists and it fits), into .gpu-wheels/, checked against the 64 MiB that travel.
  run       on the GPU machine: install the wheels with no index into a temporary folder put on PYTHONPATH,
            then, within 8 minutes, the cuda-marked tests, the TF32 check, the one-GPU DDP/FSDP nccl checks
            and the transformer step benchmark; results in $OUT (else benchmarks/results/gpu/); a summary;
            exit status 1 if any part failed.
  dry-run   here: prepare (or reuse) the wheels, make a fresh virtual environment with CPU torch from pip's
            local sources only, install the wheels as 'run' does, and check 'prec list', that every prec
            package imports, and the benchmark on the cpu (tiny sizes, 2 steps).

Through the device tool (from the repository root, after 'scripts/gpu-check prepare'):
  run(command="bash scripts/gpu-check run", carry=[".gpu-wheels"], timeout_s=540)

PYTHON picks the interpreter (default: python3); on the GPU machine it must be the one that holds torch.
"""


def _prepare(args: argparse.Namespace, parts: Parts) -> wheelhouse.Manifest | None:
    if not wheelhouse.is_ignored(ROOT, args.wheels) and args.wheels.resolve().is_relative_to(ROOT):
        parts.say(f"warning: {args.wheels} is not ignored by git; add '/{args.wheels.name}/' to .gitignore"
                  " (or .git/info/exclude) so that it travels only when carried")  # fmt: skip
    result: list[wheelhouse.Manifest] = []

    def work() -> str:
        manifest = wheelhouse.prepare(ROOT, args.wheels, sys.executable, downloads=not args.prec_only)
        result.append(manifest)
        parts.say(wheelhouse.describe(manifest, args.wheels))
        return f"{len(manifest.packages) + len(manifest.third_party)} wheels"

    parts.call("prepare wheels", work)
    return result[0] if result else None


def prepare(args: argparse.Namespace) -> int:
    parts = Parts("prepare", budget_s=1800)
    _prepare(args, parts)
    return parts.summary()


def _cuda_test_paths() -> list[str]:
    """Every plugin's tests, and the other test files that hold cuda-marked tests (pytest collects, -m selects)."""
    paths = [str(path.relative_to(ROOT)) for path in sorted(ROOT.glob("plugins/*/tests")) if path.is_dir()]
    for path in sorted([*ROOT.glob("tests/test_*.py"), *ROOT.glob("packages/*/tests/test_*.py")]):
        if "pytest.mark.cuda" in path.read_text(encoding="utf-8", errors="replace"):
            paths.append(str(path.relative_to(ROOT)))
    return paths


ENVIRONMENT = """
import torch, prec
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| prec", prec.__version__)
if not torch.cuda.is_available():
    raise SystemExit("no CUDA GPU here: 'run' needs one ('dry-run' checks the install on a cpu)")
print("GPU:", torch.cuda.get_device_name(), "compute capability", torch.cuda.get_device_capability())
if not torch.__version__.startswith("2.11."):
    print("note: the torchao wheel was chosen for torch 2.11; this torch is", torch.__version__)
"""


def run(args: argparse.Namespace) -> int:
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    parts = Parts("gpu-check run", budget_s=RUN_BUDGET_S, log=out / "gpu_check.log")
    python = sys.executable
    manifest = wheelhouse.Manifest.load(args.wheels)
    for item in manifest.left_out:
        parts.say(f"left out of the wheels: {item['name']}: {item['reason']}")
    site = Path(tempfile.mkdtemp(prefix="prec-gpu-site-"))
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OUT": str(out), "PYTHONUNBUFFERED": "1"}
    wheels = sorted(str(path) for path in args.wheels.glob("*.whl"))
    install = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
               "--disable-pip-version-check", "--target", str(site), *wheels]  # fmt: skip
    if wheels:
        parts.command("install wheels", install, RUN_LIMITS["install"])
    else:
        parts.call("install wheels", lambda: _fail(f"no wheels in {args.wheels}: run 'scripts/gpu-check prepare'"))
    environment = parts.command("environment", [python, "-c", ENVIRONMENT], RUN_LIMITS["environment"], env=env)
    if environment.status != "passed":
        return parts.summary({"out": str(out)}, out / "gpu_check_summary.json")
    parts.command("prec list", [python, "-m", "prec", "list"], RUN_LIMITS["environment"], env=env)
    tests = [python, "-m", "pytest", "-m", "cuda", *_cuda_test_paths(), "-q", "-rs", "-p", "no:cacheprovider"]
    parts.command("cuda-marked tests", tests, RUN_LIMITS["tests"], cwd=ROOT, env=env)
    tf32 = ROOT / "plugins" / "prec-cuda" / "benchmarks" / "tf32_check.py"
    parts.command("TF32 check", [python, str(tf32)], RUN_LIMITS["tf32"], cwd=out, env=env)
    torchrun = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    ddp = [*torchrun, str(HERE / "ddp_one_gpu.py"), "--device", "cuda", "--out", str(out)]
    parts.command("DDP/FSDP on one GPU (nccl)", ddp, RUN_LIMITS["ddp"], cwd=out, env=env)
    bench = [python, str(HERE / "step_bench.py"), "--device", "cuda", "--out", str(out)]
    parts.command("transformer step benchmark", bench, RUN_LIMITS["benchmark"], cwd=out, env=env)
    return parts.summary({"out": str(out), "left_out": manifest.left_out}, out / "gpu_check_summary.json")


def _fail(message: str) -> str:
    raise RuntimeError(message)


def dry_run(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="prec-gpu-dry-run-"))
    out = args.out or scratch / "results"
    out.mkdir(parents=True, exist_ok=True)
    parts = Parts("gpu-check dry-run", budget_s=args.budget)
    manifest = _prepare(args, parts)
    if manifest is None:
        return parts.summary()
    sources = offline_env.local_sources(sys.executable)
    if not sources.torch_wheels():
        parts.say(
            f"SKIPPED: pip's configuration names no local find-links folder with a torch-{offline_env.TORCH}"
            f" wheel (found folders: {[str(f) for f in sources.folders]}); the offline install cannot be shown"
        )
        return parts.summary()
    parts.say(f"local pip sources: folders {[str(f) for f in sources.folders]}, indexes {sources.indexes}")
    venv = scratch / "venv"
    python = str(offline_env.create(venv, sys.executable))
    folders = [ROOT / entry.source for entry in manifest.packages]
    base = offline_env.base_requirements(folders, set(wheelhouse.THIRD_PARTY))  # whether carried or not
    # pip's own configuration could add a remote index: it is switched off, only the local sources are named.
    offline = clean_environment(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    torch = [python, "-m", "pip", "install", "--no-cache-dir", "--no-compile", "--quiet", *sources.pip_arguments(),
             *base]  # fmt: skip
    parts.command("torch and the GPU image's packages, offline", torch, 900, env=offline, cwd=scratch)
    site = scratch / "site"
    wheels = sorted(str(path) for path in args.wheels.glob("*.whl"))
    install = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
               "--target", str(site), *wheels]  # fmt: skip
    parts.command("install wheels (as 'run' does)", install, 300, env=offline, cwd=scratch)
    env = clean_environment(PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    checks = str(HERE / "offline_checks.py")
    listed = [entry.name for entry in manifest.packages if wheelhouse.discovered(ROOT / entry.source)]
    parts.command("prec list", [python, checks, "list", str(site), *listed], 120, env=env, cwd=scratch)
    parts.command("every prec package imports", [python, checks, "imports", str(site), *manifest.modules], 120,
                  env=env, cwd=scratch)  # fmt: skip
    bench = [python, str(HERE / "step_bench.py"), "--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1",
             "--out", str(out)]  # fmt: skip
    parts.command("transformer step benchmark on the cpu", bench, 600, env=env, cwd=scratch)
    parts.say(f"benchmark results in {out}")
    for folder in (venv, site) if args.out is None else (scratch,):  # a gigabyte with torch: results stay
        shutil.rmtree(folder, ignore_errors=True)
    return parts.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", usage=USAGE, add_help=True)
    parser.add_argument("command", choices=("prepare", "run", "dry-run"))
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels", help="the wheel folder")
    parser.add_argument("--prec-only", action="store_true", help="prepare prec's own wheels, download nothing")
    parser.add_argument("--out", type=Path, help="results folder (run: $OUT, else benchmarks/results/gpu/)")
    parser.add_argument("--budget", type=float, default=1800, help="dry-run: seconds for all its parts")
    args = parser.parse_args(argv)
    args.wheels = args.wheels.resolve()
    return {"prepare": prepare, "run": run, "dry-run": dry_run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
