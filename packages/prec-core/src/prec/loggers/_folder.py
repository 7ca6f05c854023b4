"""What the file-writing loggers share: a ``save_dir/name/version_N`` folder, fixed and checked at the run's start."""

from __future__ import annotations

import os
from pathlib import Path

from prec.errors import ConfigurationError
from prec.loggers._buffer import RowBuffer
from prec.loggers._protocol import check_writable, version_dir


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
        super().__init__(flush_every_n_steps)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.name = name
        self._version = version
        self.enabled = True
        self._resolved_dir: Path | None = None

    def setup(self, root_dir: Path, is_global_zero: bool) -> None:
        """At the start of a run: fixes the folder and whether this process writes, and checks it can."""
        if self.save_dir is None:
            self.save_dir = Path(root_dir)
        self.enabled = is_global_zero
        if is_global_zero:
            check_writable(self.log_dir, type(self).__name__)

    @property
    def log_dir(self) -> Path:
        if self._resolved_dir is None:
            if self.save_dir is None:
                raise ConfigurationError(
                    f"{type(self).__name__} has no save_dir yet: pass one or attach it to a Trainer."
                )
            self._resolved_dir = version_dir(self.save_dir, self.name, self._version, self.marker)
        return self._resolved_dir
