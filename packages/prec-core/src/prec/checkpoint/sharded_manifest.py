"""The manifest of a sharded checkpoint, ``prec_sharded.json``: which files the directory holds, and their digests.

Format 2 (this prec) records the digest algorithm (``xxh3_128``); format 1 (older prec) used SHA-256 without
naming it, and still loads. Verification accounts for every file: a listed file that is missing, a file the
manifest does not list (an ``extras/`` file or a shard planted beside the others), a symbolic link, or a listed
name that leaves the directory is refused, naming it. The digests catch damage (a flipped bit, a truncated copy);
they are not a signature: anyone who can write the directory can rewrite the manifest, which is why the loaders
also never unpickle more than plain data from it (:mod:`prec.checkpoint.sharded_reader`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from prec.checkpoint.digest import ALGORITHMS, DEFAULT_ALGORITHM, file_digest

__all__ = [
    "BACKUP_SUFFIX",
    "MANIFEST",
    "SHARDED_FORMAT",
    "is_sharded_checkpoint",
    "listed_files",
    "problem_with",
    "read_manifest",
    "readable",
    "write_manifest",
]

MANIFEST = "prec_sharded.json"
#: The format this prec writes; it reads 1 and 2.
SHARDED_FORMAT = 2
_LEGACY_ALGORITHM = {1: "sha256"}
_EXTRAS = "extras"


def write_manifest(staging: Path, world_size: int, algorithm: str = DEFAULT_ALGORITHM) -> None:
    """List every file under ``staging`` with its digest in ``staging/MANIFEST``."""
    files = {
        PurePosixPath(p.relative_to(staging)).as_posix(): file_digest(p, algorithm)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    manifest = {"format": SHARDED_FORMAT, "world_size": world_size, "algorithm": algorithm, "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest as written (no checks: see :func:`problem_with`)."""
    return dict(json.loads((source / MANIFEST).read_text()))


def listed_files(source: Path) -> list[str]:
    """The relative names the manifest lists."""
    return list(read_manifest(source).get("files", {}))


def problem_with(source: Path) -> str | None:
    """Why the directory ``source`` cannot be trusted to be what its manifest says, or ``None``."""
    try:
        manifest = read_manifest(source)
    except (OSError, ValueError) as error:
        return f"sharded checkpoint {source}: unreadable {MANIFEST}: {error}"
    version = manifest.get("format")
    if version not in (1, SHARDED_FORMAT):
        return f"sharded checkpoint {source} has format {version!r}; this prec reads 1 and {SHARDED_FORMAT}."
    algorithm = _LEGACY_ALGORITHM.get(version, manifest.get("algorithm"))
    files = manifest.get("files")
    if algorithm not in ALGORITHMS or not isinstance(files, dict) or not isinstance(manifest.get("world_size"), int):
        return f"sharded checkpoint {source}: {MANIFEST} is malformed (algorithm {algorithm!r}, files, world_size)."
    for name, expected in files.items():
        if not _plain_name(name) or not isinstance(expected, str):
            return f"sharded checkpoint {source}: {MANIFEST} lists {name!r}, which is not a file inside it."
    unlisted = _unlisted(source, set(files))
    if unlisted:
        return (
            f"sharded checkpoint {source} holds {unlisted}, which its {MANIFEST} does not list: prec loads only"
            " the files it wrote. Remove it, or restore the directory from a copy."
        )
    for name, expected in files.items():
        file = source / name
        if file.is_symlink() or not file.is_file():
            return f"sharded checkpoint {source} is incomplete: {name} is missing."
        if file_digest(file, algorithm) != expected:
            return f"sharded checkpoint {source} is corrupt: {name} does not match its {algorithm} in {MANIFEST}."
    return None


def _plain_name(name: Any) -> bool:
    """A relative POSIX name of a file in the directory or in its ``extras`` folder, nothing else."""
    if not isinstance(name, str) or "\\" in name or name == MANIFEST:
        return False
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return False
    return len(parts) == 1 or (len(parts) == 2 and parts[0] == _EXTRAS)


def _unlisted(source: Path, listed: set[str]) -> str | None:
    """The first entry under ``source`` that is neither the manifest, a listed file, nor the extras folder."""
    for root, directories, names in os.walk(source):
        here = Path(root)
        for name in sorted(names) + sorted(d for d in directories if (here / d).is_symlink()):
            relative = PurePosixPath((here / name).relative_to(source)).as_posix()
            if relative != MANIFEST and (relative not in listed or (here / name).is_symlink()):
                return relative
        for directory in sorted(directories):
            relative = PurePosixPath((here / directory).relative_to(source)).as_posix()
            if relative != _EXTRAS and not (here / directory).is_symlink():
                return relative + "/"
    return None


#: The name a checkpoint directory is renamed to while a newer one replaces it.
BACKUP_SUFFIX = ".old"


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a directory :func:`save_sharded` wrote (or its backup, after a save killed mid-swap)."""
    return readable(Path(path)) is not None


def readable(path: Path) -> Path | None:
    """``path``, or its backup after a save killed between its two renames."""
    for candidate in (path, path.with_name(path.name + BACKUP_SUFFIX)):
        if candidate.is_dir() and (candidate / MANIFEST).is_file():
            return candidate
    return None
