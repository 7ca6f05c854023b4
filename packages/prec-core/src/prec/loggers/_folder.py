"""What the file-writing loggers share: a ``save_dir/name/version_N`` folder, fixed and checked at the run's start."""

from __future__ import annotations

import os
from pathlib import Path

from prec.errors import ConfigurationError
from prec.loggers._buffer import RowBuffer
from prec.loggers._paths import check_path, check_writable
from prec.loggers._protocol import version_dir

_REMEDY = "Pass a writable save_dir= (or default_root_dir= to the Trainer), free some space, or pass logger=False."


class FolderLogger(RowBuffer):
    """A buffered logger writing into one version folder; subclasses name the file that marks a folder as taken
    (``marker``, a glob), so a new run picks the next ``version_{n}``."""

    marker: str = "*"

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None,
        name: str,
        version: int | str | None,
        flush_every_n_steps: int,
    ) -> None:
        owner = type(self).__name__
        super().__init__(flush_every_n_steps)
        self.save_dir = check_path(f"{owner}(save_dir)", save_dir, none="the Trainer's default_root_dir")
        self.name = _check_name(owner, name)
        self._version = _check_version(owner, version)
        self.enabled = True
        self._resolved_dir: Path | None = None

    def setup(self, root_dir: Path, is_global_zero: bool) -> None:
        """At the start of a run: fixes the folder and whether this process writes, and checks it can."""
        if self.save_dir is None:
            self.save_dir = Path(root_dir)
        self.enabled = is_global_zero
        if is_global_zero:
            check_writable(self.log_dir, type(self).__name__, _REMEDY)

    @property
    def log_dir(self) -> Path:
        if self._resolved_dir is None:
            if self.save_dir is None:
                raise ConfigurationError(
                    f"{type(self).__name__} has no save_dir yet: pass one or attach it to a Trainer."
                )
            self._resolved_dir = version_dir(self.save_dir, self.name, self._version, self.marker)
        return self._resolved_dir


def _check_name(owner: str, name: object) -> str:
    """The experiment's subfolder: one folder name (``""``: straight under ``save_dir``, as in Lightning)."""
    if not isinstance(name, str):
        raise ConfigurationError(f"{owner}(name={name!r}) must be a folder name (str); got {type(name).__name__}.")
    if name:
        check_path(f"{owner}(name)", name)
    return name


def _check_version(owner: str, version: object) -> int | str | None:
    """An int >= 0 (``version_{n}``), a folder name, or ``None`` (the next free ``version_{n}``)."""
    if version is None:
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str) and version:
        check_path(f"{owner}(version)", version)
        return version
    raise ConfigurationError(
        f"{owner}(version={version!r}) must be an int >= 0 (version_{{n}}), a folder name (str) or None (the next"
        " free version_{n})."
    )
