"""Throwaway virtual environments for testing plugins installed the way a user installs them.

A :class:`Sandbox` is a fresh venv that also sees the packages of the interpreter that created it (torch is not
reinstalled: the parent's site-packages are appended to the sandbox's ``sys.path`` by a ``.pth`` file, after the
sandbox's own). Distributions are installed into it with ``pip --no-deps`` (and, when hatchling is installed here,
``--no-build-isolation --no-index``: nothing is downloaded); the parent environment is never modified.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path


class Sandbox:
    """A virtual environment at ``path`` layered over the current interpreter's environment."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.python = self.path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Sandbox:
        sandbox = cls(Path(path))
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(sandbox.path)], check=True)
        purelib = subprocess.run(
            [str(sandbox.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        parents = dict.fromkeys(site.getsitepackages())
        lines = [f"import site; site.addsitedir({directory!r})" for directory in parents]
        (Path(purelib) / "_prec_sandbox_parent.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return sandbox

    def install(self, *projects: str | os.PathLike[str], editable: bool = False, offline: bool | None = None) -> None:
        """``pip install`` local project directories (or wheels) without dependencies.

        ``offline`` (the default when hatchling is importable here) builds with this environment's hatchling and
        never touches the network; otherwise pip builds in isolation and fetches the build backend.
        """
        if offline is None:
            offline = importlib.util.find_spec("hatchling") is not None
        command = ["-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
        command += ["--no-build-isolation", "--no-index"] if offline else []
        for project in projects:
            command += ["-e", str(project)] if editable else [str(project)]
        result = self.run(*command)
        if result.returncode != 0:
            raise RuntimeError(f"pip install failed in {self.path}:\n{result.stdout}\n{result.stderr}")

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 240, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the sandbox's python with ``args``; ``env`` is added to a copy of the current environment with
        every ``PREC_*`` variable removed, so the caller's settings do not leak in."""
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PREC_")}
        environment.pop("PYTHONPATH", None)
        environment.update(env or {})
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, env=environment, timeout=timeout, cwd=cwd
        )

    def prec(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``prec`` command line in the sandbox (``sandbox.prec("list", "--json")``)."""
        return self.run("-m", "prec.cli.app", *args, env=env)


def write_plugin_package(
    root: str | os.PathLike[str],
    distribution: str,
    code: str,
    *,
    module: str | None = None,
    entry_point: str | None = None,
    version: str = "0.1.0",
    extra_entry_points: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write a minimal installable plugin project (hatchling, one module, entry point group ``prec``) under
    ``root/distribution`` and return its directory. ``code`` is the module's source."""
    module = module or distribution.replace("-", "_")
    project = Path(root) / distribution
    (project / module).mkdir(parents=True, exist_ok=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(code), encoding="utf-8")
    points = [(entry_point or module, module), *extra_entry_points]
    lines = "\n".join(f'"{name}" = "{value}"' for name, value in points)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{distribution}"
            version = "{version}"

            [project.entry-points.prec]
            """
        )
        + lines
        + f'\n\n[tool.hatch.build.targets.wheel]\npackages = ["{module}"]\n',
        encoding="utf-8",
    )
    return project
