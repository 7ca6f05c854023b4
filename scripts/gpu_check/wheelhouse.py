"""The folder of wheels that travels to a GPU machine with no network and no build backend.

It holds a wheel of every prec package (prec-core and each plugin found by globbing ``plugins/*/pyproject.toml``)
and the pure-Python third-party wheels the GPU machine's image lacks. A ``manifest.json`` next to them records
what was built from which sources, so a second ``prepare`` rebuilds only what changed, and what was left out and
why, so the run on the GPU machine can say so. The folder and the working tree travel together under one size
limit, which :func:`check_budget` enforces before anything leaves this machine.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

#: What may travel to the GPU machine in one call: working tree and carried folders together.
BUDGET_BYTES = 64 * 2**20
#: Packages that never travel: the example plugin adds 16-mixed on cpu, which the development environment also
#: leaves out on purpose. prec-xla travels: the GPU machine has no torch_xla, but the plugin tests are written
#: against an environment where it is installed (it is a workspace member), and its wheel is a few kB.
SKIPPED_PLUGINS = {"prec-example-cpu16": "an example; installed it adds 16-mixed on cpu for every other package"}
#: The torchao for the GPU machine's torch 2.11. torchao's compatibility table pairs 0.17.0 with torch 2.11.0+:
#: from 0.17.0 on its kernels use torch's stable ABI and load on any torch >= 2.11.0 (both 0.17.0's and 0.18.0's
#: ``torchao/__init__.py`` gate on exactly that). prec-torchao requires torchao>=0.18.0, so 0.18.0 it is; prepare
#: checks this pin against prec-torchao's requirement.
TORCHAO = "0.18.0"
#: The GPU machine's torch (major, minor).
GPU_TORCH = (2, 11)
#: bitsandbytes travels only where a plugin needs it (plugins/prec-bnb); its wheel is about 41 MiB.
BITSANDBYTES = "0.50.2"
#: The GPU machine: CPython 3.12 on x86-64 Linux.
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    arg
    for platform in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for arg in ("--platform", platform)
]
MANIFEST = "manifest.json"
#: What the GPU machine's image lacks and prepare may carry there as wheels.
THIRD_PARTY = ("torchao", "bitsandbytes")


class WheelhouseError(Exception):
    """prepare cannot produce a folder that would install and travel."""


@dataclass
class Entry:
    """One wheel of the folder: a prec package built here, or a downloaded third-party wheel."""

    name: str
    wheel: str
    source: str = ""  # repository path of a prec package; "" for a download
    digest: str = ""  # of the package's sources, or the pinned version of a download
    why: str = ""


@dataclass
class Manifest:
    packages: list[Entry] = field(default_factory=list)
    third_party: list[Entry] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)
    wheel_bytes: int = 0
    tree_bytes: int = 0
    budget_bytes: int = BUDGET_BYTES

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            packages=[Entry(**entry) for entry in data.get("packages", [])],
            third_party=[Entry(**entry) for entry in data.get("third_party", [])],
            left_out=data.get("left_out", []),
            wheel_bytes=data.get("wheel_bytes", 0),
            tree_bytes=data.get("tree_bytes", 0),
        )

    def save(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @property
    def modules(self) -> list[str]:
        """The import name of every prec package in the folder (``prec-cuda`` -> ``prec_cuda``, core: ``prec``)."""
        return ["prec" if entry.name == "prec-core" else entry.name.replace("-", "_") for entry in self.packages]


def prec_packages(root: Path) -> list[tuple[str, Path]]:
    """(distribution name, folder) of prec-core and every plugin that travels, in a stable order."""
    found = [root / "packages" / "prec-core"]
    found += sorted(path.parent for path in root.glob("plugins/*/pyproject.toml"))
    packages = []
    for folder in found:
        name = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
        if name not in SKIPPED_PLUGINS:
            packages.append((name, folder))
    return packages


def discovered(folder: Path) -> bool:
    """Whether ``prec list`` must show the package: prec-core, and every package with an entry point in group
    ``prec`` (a package that only uses prec, such as a bridge to another framework, declares none)."""
    project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["name"] == "prec-core" or "prec" in project.get("entry-points", {})


def source_digest(folder: Path) -> str:
    """What a wheel of ``folder`` is built from: its project file, readme, licence and everything under src/."""
    digest = hashlib.sha256()
    files = [folder / name for name in ("pyproject.toml", "README.md", "LICENSE")]
    files += sorted(path for path in (folder / "src").rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def tree_bytes(root: Path, exclude: Path) -> int:
    """Bytes of what travels besides the wheels: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    total = 0
    for name in filter(None, listed.split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink() and exclude not in path.parents:
            total += path.stat().st_size
    return total


def is_ignored(root: Path, folder: Path) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", str(folder) + "/"], cwd=root, capture_output=True)
    return done.returncode == 0


def _pip(python: str, *args: str) -> None:
    command = [python, "-m", "pip", *args]
    print("  $", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise WheelhouseError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def _has_hatchling(python: str) -> bool:
    return subprocess.run([python, "-c", "import hatchling"], capture_output=True).returncode == 0


def build(python: str, stale: list[tuple[str, Path]], folder: Path) -> dict[str, str]:
    """Build wheels of ``stale`` packages into ``folder``; returns name -> wheel file name."""
    if not stale:
        return {}
    with tempfile.TemporaryDirectory(prefix="prec-wheels-") as scratch:
        # With hatchling at hand no index is needed; without it pip builds in isolation and fetches hatchling.
        isolation = ["--no-build-isolation"] if _has_hatchling(python) else []
        _pip(python, "wheel", "--no-deps", "--no-cache-dir", *isolation, "-w", scratch,
             *(str(path) for _, path in stale))  # fmt: skip
        built = {}
        for name, _ in stale:
            stem = name.replace("-", "_")
            wheels = list(Path(scratch).glob(f"{stem}-*.whl"))
            if len(wheels) != 1:
                raise WheelhouseError(f"building {name} gave {len(wheels)} wheels: {[w.name for w in wheels]}")
            shutil.move(str(wheels[0]), folder / wheels[0].name)
            built[name] = wheels[0].name
        return built


def download(python: str, requirement: str, folder: Path) -> str:
    """Download the CPython 3.12 x86-64 wheel of ``requirement`` (no dependencies) into ``folder``."""
    with tempfile.TemporaryDirectory(prefix="prec-download-") as scratch:
        _pip(python, "download", "--no-deps", "--no-cache-dir", *TARGET, "-d", scratch, requirement)
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise WheelhouseError(f"downloading {requirement} gave {[w.name for w in wheels]}")
        shutil.move(str(wheels[0]), folder / wheels[0].name)
        return wheels[0].name


def check_pin(root: Path, name: str, version: str) -> None:
    """Fail when a prec package's requirement on ``name`` rejects the ``version`` that would travel."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy is not public API; without packaging the pin goes unchecked
        print(f"  note: 'packaging' is not installed, {name}=={version} is not checked against the plugins")
        return
    for package, folder in prec_packages(root):
        project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        for text in project.get("dependencies", []):
            requirement = Requirement(text)
            if requirement.name == name and not requirement.specifier.contains(version, prereleases=True):
                raise WheelhouseError(f"{package} requires {text}, but {name}=={version} would travel: update"
                                      f" the pin in scripts/gpu_check/wheelhouse.py")  # fmt: skip


def check_torch_gate(wheel: Path) -> None:
    """torchao skips its kernels below the torch its ``__init__`` names: that torch must not exceed the GPU's."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("torchao/__init__.py").decode()
    gate = re.search(r'min_torch_version = _parse_version\("([0-9.]+)"\)', text)
    if gate and tuple(int(part) for part in gate.group(1).split(".")[:2]) > GPU_TORCH:
        raise WheelhouseError(f"{wheel.name} loads its kernels on torch >= {gate.group(1)} only; the GPU machine"
                              f" has torch {'.'.join(map(str, GPU_TORCH))}")  # fmt: skip


def _size(folder: Path, entries: list[Entry]) -> int:
    return sum((folder / entry.wheel).stat().st_size for entry in entries)


def check_budget(manifest: Manifest) -> None:
    """Fail when the wheels and the working tree would not travel together."""
    total = manifest.wheel_bytes + manifest.tree_bytes
    if total >= manifest.budget_bytes:
        raise WheelhouseError(
            f"wheels ({manifest.wheel_bytes / 2**20:.1f} MiB) and working tree ({manifest.tree_bytes / 2**20:.1f}"
            f" MiB) come to {total / 2**20:.1f} MiB, over the {manifest.budget_bytes / 2**20:.0f} MiB that travel"
        )


def prepare(root: Path, folder: Path, python: str = sys.executable, *, downloads: bool = True) -> Manifest:
    """Bring ``folder`` up to date: rebuild changed prec packages, fetch missing downloads, drop stale wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    previous_manifest = Manifest.load(folder)
    old = {entry.name: entry for entry in previous_manifest.packages + previous_manifest.third_party}
    manifest = Manifest()
    stale = []
    for name, path in prec_packages(root):
        digest = source_digest(path)
        previous = old.get(name)
        if previous and previous.digest == digest and (folder / previous.wheel).is_file():
            manifest.packages.append(previous)
        else:
            stale.append((name, path))
            manifest.packages.append(Entry(name, "", str(path.relative_to(root)), digest))
    built = build(python, stale, folder)
    for entry in manifest.packages:
        entry.wheel = built.get(entry.name, entry.wheel)
    print(f"  prec wheels: {len(built)} built, {len(manifest.packages) - len(built)} reused"
          + (f" (built: {', '.join(built)})" if built else ""), flush=True)  # fmt: skip
    manifest.tree_bytes = tree_bytes(root, folder)
    if downloads:
        wanted = [("torchao", TORCHAO, "fp8 precisions of prec-torchao; its kernels load on torch >= 2.11")]
        if (root / "plugins" / "prec-bnb" / "pyproject.toml").is_file():
            wanted.append(("bitsandbytes", BITSANDBYTES, "needed by plugins/prec-bnb"))
        for name, version, why in wanted:
            check_pin(root, name, version)
            previous = old.get(name)
            if previous and previous.digest == version and (folder / previous.wheel).is_file():
                entry = previous
            else:
                entry = Entry(name, download(python, f"{name}=={version}", folder), "", version, why)
            if name == "torchao":
                check_torch_gate(folder / entry.wheel)
            used = _size(folder, manifest.packages + manifest.third_party + [entry]) + manifest.tree_bytes
            if name != "torchao" and used >= BUDGET_BYTES:
                size = (folder / entry.wheel).stat().st_size / 2**20
                (folder / entry.wheel).unlink()
                manifest.left_out.append({"name": name, "reason": f"its {size:.0f} MiB wheel would exceed the"
                                          f" {BUDGET_BYTES // 2**20} MiB that travel; {why}"})  # fmt: skip
                continue
            manifest.third_party.append(entry)
    else:
        manifest.left_out.append({"name": "third-party wheels", "reason": "prepared with --prec-only"})
    keep = {entry.wheel for entry in manifest.packages + manifest.third_party}
    for wheel in folder.glob("*.whl"):
        if wheel.name not in keep:  # two versions of one package would stop the whole install
            wheel.unlink()
    manifest.wheel_bytes = _size(folder, manifest.packages + manifest.third_party)
    manifest.save(folder)
    check_budget(manifest)
    return manifest


def describe(manifest: Manifest, folder: Path) -> str:
    lines = [f"{folder}: {len(manifest.packages) + len(manifest.third_party)} wheels"]
    lines += [f"  {entry.wheel}" for entry in manifest.packages + manifest.third_party]
    lines += [f"  left out: {item['name']}: {item['reason']}" for item in manifest.left_out]
    lines.append(
        f"  {manifest.wheel_bytes / 2**20:.1f} MiB of wheels + {manifest.tree_bytes / 2**20:.1f} MiB of working tree"
        f" = {(manifest.wheel_bytes + manifest.tree_bytes) / 2**20:.1f} of {manifest.budget_bytes // 2**20} MiB"
    )
    return "\n".join(lines)


def install(python: str, folder: Path, target: Path) -> Manifest:
    """Install every wheel of ``folder`` into ``target`` without an index or dependencies (what the GPU machine
    can do); ``target`` then goes on PYTHONPATH, where entry points are found through its dist-info folders."""
    manifest = Manifest.load(folder)
    wheels = sorted(str(path) for path in folder.glob("*.whl"))
    if not manifest.packages or not wheels:
        raise WheelhouseError(f"no prepared wheels in {folder}: run 'scripts/gpu-check prepare' first")
    _pip(python, "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
         "--quiet", "--target", str(target), *wheels)  # fmt: skip
    return manifest
