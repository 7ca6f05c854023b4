"""Reading installed distributions' entry points cheaply: the cost of a scan grows with every installed
distribution, so each one costs a file read, and metadata is parsed only for those that publish the group."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, distributions
from typing import Any

from prec.plugin.entries import normalize_distribution


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


#: Seconds a plugin may take to import (or to run its hooks) before prec says on stderr which one it waits for.
SLOW_PLUGIN_SECONDS = 5.0
SLOW_PLUGIN_VARIABLE = "PREC_SLOW_PLUGIN_SECONDS"


def slow_plugin_seconds() -> float:
    """``PREC_SLOW_PLUGIN_SECONDS`` (seconds, > 0), or the default of 5 s when unset or not a positive number."""
    try:
        value = float(os.environ.get(SLOW_PLUGIN_VARIABLE, SLOW_PLUGIN_SECONDS))
    except ValueError:
        return SLOW_PLUGIN_SECONDS
    return value if value > 0 and math.isfinite(value) else SLOW_PLUGIN_SECONDS


class SlowPluginWatch:
    """While a plugin loads, a timer thread that, after :func:`slow_plugin_seconds`, prints on stderr which plugin
    prec is still waiting for and how to skip it. It never interrupts the plugin: an import cannot be cancelled
    safely, but a user looking at a silent ``prec list`` or ``Trainer()`` must learn who is hanging."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.seconds = slow_plugin_seconds()

    @contextlib.contextmanager
    def watch(self, plugin: str, what: str) -> Iterator[None]:
        torch_was_loaded = "torch" in sys.modules

        def report() -> None:
            print(self.message(plugin, what, torch_was_loaded), file=self.stream, flush=True)

        timer = threading.Timer(self.seconds, report)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def message(self, plugin: str, what: str, torch_was_loaded: bool) -> str:
        """What is slow, truthfully: a plugin that imports torch for the first time waits for torch, which takes
        many seconds on a busy machine or a cold disk; that is not the plugin hanging."""
        if not torch_was_loaded and importing_torch():
            return (
                f"prec: importing torch (first use, for plugin {plugin!r}) has taken more than {self.seconds:g} s;"
                " torch's first import is slow on a busy machine or a cold disk. This is torch, not the plugin:"
                f" waiting is all there is to do. {SLOW_PLUGIN_VARIABLE} sets when this message appears."
            )
        note = "" if torch_was_loaded or "torch" not in sys.modules else " (torch, imported by it first, is loaded)"
        return (
            f"prec: still {what} plugin {plugin!r} after {self.seconds:g} s{note}. If it hangs, skip it with"
            f" PREC_DISABLED_PLUGINS={plugin} (or PREC_DISABLE_PLUGIN_AUTOLOAD=1 to load none);"
            f" {SLOW_PLUGIN_VARIABLE} sets when this message appears."
        )


def importing_torch() -> bool:
    """Whether ``import torch`` is running right now (its module exists but has not finished executing)."""
    module = sys.modules.get("torch")
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))
