"""Checkpoint files: written atomically with a checksum, read back verified, with clear errors.

A save writes ``.{name}.{host}.{pid}.{random}.tmp`` beside the target, fsyncs it and renames it over the target,
so a process killed mid-write leaves the previous file intact. The temporary file such a kill leaves behind is
removed by the next save of the same target: at once when it was written on this host by a process that no longer
exists, otherwise (another host, or the unnamed ``.{name}.{random}.tmp`` of older prec versions) once it is older
than :data:`STALE_TEMP_AGE_S`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from prec.checkpoint.checks import check_layout
from prec.checkpoint.digest import verify_checksum, with_checksum
from prec.checkpoint.load_digests import LoadTimeDigests, has_checksum_record
from prec.errors import CheckpointError

__all__ = ["STALE_TEMP_AGE_S", "atomic_save", "make_temporary", "read_checkpoint", "remove_stale_temporaries"]

#: Temporary files of a target not provably abandoned (another host's, or unnamed) are removed after this long.
STALE_TEMP_AGE_S = 24 * 60 * 60
_LISTED = 8
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_log = logging.getLogger("prec")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a number the kernel cannot judge: treat as alive
    return True


def remove_stale_temporaries(target: str | os.PathLike[str], now: float | None = None) -> list[Path]:
    """Delete the temporary files that killed saves of ``target`` left behind; returns what was removed.

    Only names of prec's own pattern for this target are considered; see the module docstring for the rule."""
    target = Path(target)
    pattern, host, own = _temp_pattern(target), _host(), os.getpid()
    now = time.time() if now is None else now
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for candidate in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None:
            continue
        try:
            age = now - candidate.stat().st_mtime
        except FileNotFoundError:
            continue
        pid = int(match["pid"]) if match["pid"] else None
        abandoned = pid is not None and match["host"] == host and pid != own and not _process_exists(pid)
        if abandoned or age > STALE_TEMP_AGE_S:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def make_temporary(target: Path) -> tuple[int, str]:
    """Open a new temporary file beside ``target``, named so :func:`remove_stale_temporaries` can tell whose it
    is: ``(descriptor, path)``."""
    return tempfile.mkstemp(prefix=f".{target.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=target.parent)


class _RecordingWriter:
    """Passes torch's writes to the file and keeps the OSError behind torch's generic "unexpected pos"."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.handle.write(data))
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as error:
            self.error = error
            raise


def atomic_save(obj: Any, path: str | os.PathLike[str], checksum: bool = True) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A dict gets a checksum record (verified by :func:`read_checkpoint`) unless ``checksum=False``. A process
    killed mid-write leaves the previous file intact; a full disk is a CheckpointError saying so, and also leaves
    the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if checksum and isinstance(obj, dict):
        obj = with_checksum(obj)
    descriptor, temporary = make_temporary(path)
    writer: _RecordingWriter | None = None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            writer = _RecordingWriter(handle)
            torch.save(obj, writer)
            handle.flush()
            os.fsync(handle.fileno())
        _replace(temporary, Path(path))
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        full = _no_space(error, writer.error if writer is not None else None)
        if full is not None:
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"no space left on {path.parent} while saving {path.name} ({free} bytes free); "
                f"{'the previous checkpoint is intact' if path.exists() else 'nothing was written'}."
            ) from full
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _no_space(error: BaseException, recorded: OSError | None) -> OSError | None:
    for candidate in (recorded, error, error.__cause__, error.__context__):
        if isinstance(candidate, OSError) and candidate.errno in _NO_SPACE:
            return candidate
    return None


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU and verify its checksum; any unreadable, damaged or malformed file becomes a
    :class:`CheckpointError` naming it (and the part that is wrong)."""
    path = Path(path)
    if path.is_dir():
        _refuse_directory(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.")
    # A checkpoint that will be verified is hashed storage by storage as it loads (one pass over its bytes).
    known = LoadTimeDigests() if has_checksum_record(path) else None
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing on them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            location = known.map_location if known is not None else "cpu"
            checkpoint = torch.load(path, map_location=location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): the file is corrupt, truncated or not"
            f" a torch checkpoint. torch said: {type(error).__name__}: {reason}"
        ) from error
    if isinstance(checkpoint, dict) and not verify_checksum(path, checkpoint, known):
        _log.info("checkpoint %s has no checksum (written by an older prec or another program): not verified", path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = sorted(map(str, checkpoint))[:_LISTED] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a prec checkpoint: expected a dict with 'state_dict', got {keys}.")
    check_layout(path, checkpoint)
    return checkpoint


def _refuse_directory(path: Path) -> None:
    """A directory is never read as one checkpoint; a sharded one (``strategy="fsdp"``) says how to use it."""
    from prec.checkpoint.sharded_manifest import is_sharded_checkpoint

    if is_sharded_checkpoint(path):
        raise CheckpointError(
            f"{path} is a sharded checkpoint directory (written under strategy='fsdp'), which only an FSDP run"
            " loads. To load it in one process, convert it to one file first:"
            f" prec.checkpoint.sharded.export_full_checkpoint({str(path)!r}, 'full.ckpt'),"
            " then pass ckpt_path='full.ckpt'."
        )
    raise CheckpointError(f"{path} is a directory, not a checkpoint file.")


def _replace(temporary: str | os.PathLike[str], path: Path) -> None:
    """Rename the finished file over ``path``; a sharded checkpoint directory of the same name (written by an FSDP
    run into the same folder) is moved aside first and removed only once the new file is in place."""
    if not path.is_dir():
        os.replace(temporary, path)
        return
    import shutil

    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    os.replace(path, aside)
    os.replace(temporary, path)
    shutil.rmtree(aside, ignore_errors=True)
