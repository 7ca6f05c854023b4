"""A throwaway virtual environment standing in for the GPU machine: a torch and the few packages that machine
already has, installed from this machine's local pip sources only, so nothing is downloaded and nothing of the
development environment is seen."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import tomllib

#: The CPU torch the development environments pin; the offline one gets the same.
TORCH = "2.13.0"


@dataclass
class LocalSources:
    """pip's configured sources that are files on this machine: find-links folders and file:// indexes."""

    folders: list[Path] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)

    def torch_wheels(self) -> list[Path]:
        return [wheel for folder in self.folders for wheel in sorted(folder.glob(f"torch-{TORCH}*.whl"))]

    def pip_arguments(self) -> list[str]:
        """Sources for ``pip install``: the local indexes (if any) in place of any other index, and the folders."""
        if self.indexes:
            first, *rest = self.indexes
            sources = ["--index-url", first]
            for url in rest:
                sources += ["--extra-index-url", url]
        else:
            sources = ["--no-index"]
        for folder in self.folders:
            sources += ["--find-links", str(folder)]
        return sources


def _local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        value = unquote(urlparse(value).path)
    elif "://" in value:
        return None
    path = Path(value)
    return path if path.exists() else None


def local_sources(python: str = sys.executable) -> LocalSources:
    """Read ``pip config list`` and keep what lies on this machine's disk."""
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    sources = LocalSources()
    for line in listed.splitlines():
        match = re.match(r"^[^=]*\.(find-links|index-url|extra-index-url)='(.*)'$", line.strip())
        if not match:
            continue
        key, values = match.groups()
        for value in values.split():
            path = _local_path(value)
            if path is None:
                continue
            if key == "find-links" and path.is_dir() and path not in sources.folders:
                sources.folders.append(path)
            elif key != "find-links" and value not in sources.indexes:
                sources.indexes.append(value if "://" in value else path.as_uri())
    return sources


def base_requirements(package_folders: list[Path], travelling: set[str]) -> list[str]:
    """What the GPU machine's image provides for prec: the dependencies of every prec package, optional ones
    included (its image holds lightning and tensorboard), less the prec packages themselves and what travels as
    wheels, with torch pinned to :data:`TORCH`."""
    wanted: dict[str, str] = {"torch": f"torch=={TORCH}"}
    for folder in package_folders:
        project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        optional = [item for group in project.get("optional-dependencies", {}).values() for item in group]
        for requirement in [*project.get("dependencies", []), *optional]:
            name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if name.startswith("prec-") or name in travelling or name in wanted:
                continue
            wanted[name] = requirement
    return list(wanted.values())


def create(folder: Path, python: str = sys.executable) -> Path:
    """A fresh virtual environment with pip; returns its interpreter."""
    subprocess.run([python, "-m", "venv", "--clear", str(folder)], check=True)
    return folder / "bin" / "python"
