"""Paths the user hands prec (log folders, checkpoint folders and files): checked where they are given, and the
folders test-written when a run starts, so a bad path or a read-only or full disk fails before training, not at
the first save steps later. The loggers, the Trainer and :class:`prec.ModelCheckpoint` share these checks."""

from __future__ import annotations

import contextlib
import errno
import os
import reprlib
from pathlib import Path
from typing import NoReturn

from prec.errors import ConfigurationError, StorageFullError

#: Errors that mean "the disk is full" (a file-size limit reads the same to a writer).
NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})

_NAME_MAX = 255
_PATH_MAX = 4096


def given(argument: str, value: object) -> str:
    """How the user wrote it: ``max_steps=1.5``, or ``EarlyStopping(mode='avg')`` for an argument named
    ``"EarlyStopping(mode)"``, with the value's repr shortened."""
    try:
        shown = reprlib.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the user's mistake
        shown = f"<{type(value).__name__}>"
    if argument.endswith(")") and "(" in argument:
        return f"{argument[:-1]}={shown})"
    return f"{argument}={shown}"


def check_path(argument: str, value: object, *, none: str | None = None) -> Path | None:
    """``value`` as a ``Path``: a non-empty ``str`` or ``os.PathLike`` of text, no NUL, no component longer than the
    filesystem allows. ``none`` says what ``None`` means (``None``: it is not accepted). ``argument`` is how the
    user wrote it (``"ModelCheckpoint(dirpath=...)"``), so the error names it."""
    accepted = "a non-empty str or os.PathLike path" + (f", or None ({none})" if none else "")
    if value is None:
        if none is None:
            raise ConfigurationError(f"{given(argument, None)} must be {accepted}.")
        return None
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(f"{given(argument, value)} must be {accepted}; got {type(value).__name__}.")
    try:
        text = os.fspath(value)
    except TypeError as error:
        raise ConfigurationError(f"{given(argument, value)} must be {accepted} ({error}).") from None
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise ConfigurationError(f"{given(argument, value)} must be {accepted} (no NUL character).")
    encoded = os.fsencode(text) if _encodable(text) else None
    if encoded is None:
        raise ConfigurationError(f"{given(argument, value)} cannot be written as a file name on this system.")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > _NAME_MAX or len(encoded) > _PATH_MAX:
        raise ConfigurationError(
            f"{given(argument, value)} is too long for a file system ({len(encoded)} bytes, a part of"
            f" {longest}; at most {_PATH_MAX} in all and {_NAME_MAX} per part)."
        )
    return Path(text)


def _encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def check_writable(directory: Path, owner: str, remedy: str) -> None:
    """Create ``directory`` and write a small file in it, so a read-only or full disk fails at the run's start as
    a :class:`~prec.ConfigurationError` naming ``owner``, the folder and the reason, then ``remedy``. Folders it
    had to create are removed again: a run that never writes there leaves nothing behind."""
    created = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    probe = directory / f".write-check.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigurationError(f"{owner} cannot write to {directory}: {reason}. {remedy}") from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
        for folder in created:  # innermost first; one another process filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()


def raise_full(error: OSError, owner: str, path: Path, unwritten: int) -> NoReturn:
    """A write failed during the run: a :class:`~prec.StorageFullError` when the disk is full, the error as is
    otherwise (a permission change mid-run is not a full disk)."""
    if error.errno not in NO_SPACE:
        raise error
    reason = error.strerror or os.strerror(error.errno or errno.ENOSPC)
    full = StorageFullError(
        error.errno,
        f"{owner} cannot write {path}: {reason}. The run stopped; the file holds every row written before, whole"
        f" ({unwritten} rows were not written). Free some space (or pass a save_dir= on a larger disk) and resume"
        " from the last checkpoint with trainer.fit(..., ckpt_path='last').",
    )
    raise full from error
