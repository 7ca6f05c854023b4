"""Reading installed distributions' entry points cheaply: the cost of a scan grows with every installed
distribution, so each one costs a file read, and metadata is parsed only for those that publish the group."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, distributions

from prec.entries import normalize_distribution


@dataclass(frozen=True)
class EntryPointInfo:
    """One entry point with its distribution's name and version, read once per scan."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    entry_point: EntryPoint


def scan_entry_points(group: str) -> list[EntryPointInfo]:
    """One read of ``entry_points.txt`` per installed distribution; metadata is parsed only for those that
    publish group ``prec`` (the scan cost grows with every installed distribution, so keep it to a file read)."""
    marker = f"[{group}]"
    seen: set[str] = set()
    points: list[EntryPointInfo] = []
    for dist in distributions():
        normalized = getattr(dist, "_normalized_name", None)  # from the dist-info folder name, without a parse
        if normalized is not None:
            normalized = normalize_distribution(normalized)
            if normalized in seen:
                continue
            seen.add(normalized)
        text = dist.read_text("entry_points.txt")
        if not text or marker not in text:
            continue
        name, version = _name_and_version(dist)
        if normalized is None:
            if normalize_distribution(name) in seen:
                continue
            seen.add(normalize_distribution(name))
        for point_name, value in _group(text, marker):
            points.append(EntryPointInfo(point_name, value, name, version, EntryPoint(point_name, value, group)))
    return points


def _name_and_version(dist: Distribution) -> tuple[str | None, str | None]:
    """Name and Version from the metadata headers, without parsing the whole file as an email message."""
    found: dict[str, str] = {}
    for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
        if not line:
            break  # the headers end at the first blank line
        key, _, value = line.partition(":")
        if key in ("Name", "Version"):
            found[key] = value.strip()
            if len(found) == 2:
                break
    if len(found) < 2:
        return dist.metadata["Name"], dist.version
    return found["Name"], found["Version"]


def _group(text: str, marker: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of one section of an ``entry_points.txt``."""
    section = text.split(marker, 1)[1].split("\n[", 1)[0]
    pairs = []
    for line in section.splitlines():
        name, equals, value = line.partition("=")
        if equals and not line.lstrip().startswith(("#", ";")):
            pairs.append((name.strip(), value.strip()))
    return pairs


def distribution_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
