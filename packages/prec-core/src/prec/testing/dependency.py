"""A plugin seen from a fresh interpreter where its optional dependency is missing, too old or broken.

Such a plugin must still be listed by ``prec list`` (its precisions described as unavailable, with the reason) and
must refuse selection with :class:`prec.UnsupportedPrecisionError`. :func:`probe_plugin` runs an interpreter whose
import path starts with a folder the test prepares — :func:`write_distribution_metadata` for an old release,
:func:`write_failing_package` for one whose import fails, ``hide=`` for none at all — and reports what the listing
and a selection said::

    write_distribution_metadata(tmp_path, "torchao", "0.5.0")
    probe = probe_plugin(tmp_path, precision="fp8-mixed", calls={"reason": "prec_torchao:unavailable_reason"})
    assert "too old" in probe.unavailable_reason("fp8-mixed@cpu")  # the listing's and the selection's reason
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What the fresh interpreter runs; its settings arrive as one JSON argument.
_SCRIPT = """
import importlib, json, sys
config = json.loads(sys.argv[1])
for name in config["hide"]:
    sys.modules[name] = None
import prec
from prec.cli.app import collect, render
data = collect()
result = {
    "plugins": {p["name"]: p["status"] for p in data["plugins"]},
    "descriptions": {f"{p['name']}@{p['accelerator']}": p["description"] for p in data["precisions"]},
    "table": render(data),
    "results": {},
    "error": None,
}
for label, target in config["calls"].items():
    module, _, function = target.partition(":")
    result["results"][label] = getattr(importlib.import_module(module), function)()
result["listed_imports"] = [name for name in config["watch"] if sys.modules.get(name) is not None]
try:
    prec.Trainer(
        accelerator=config["accelerator"], precision=config["precision"], precision_options=config["options"]
    )
except prec.UnsupportedPrecisionError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


@dataclass(frozen=True)
class PluginProbe:
    """What a fresh interpreter reported: every plugin's status in ``prec list``, each pair's description
    (``"fp8-mixed@cpu"`` -> text), the listing's table, the ``calls``' results, the ``watch``ed modules that the
    listing and the calls imported, and the :class:`prec.UnsupportedPrecisionError` that selecting the precision
    raised (``None`` when the Trainer was built)."""

    plugins: dict[str, str]
    descriptions: dict[str, str]
    table: str
    results: dict[str, Any]
    listed_imports: list[str]
    error: str | None

    def unavailable_reason(self, *pairs: str) -> str:
        """The one reason the listing gave for every pair in ``pairs`` (``"fp8-mixed@cpu"``, described as
        ``"unavailable: <reason>"``), also quoted by the refused selection; :class:`AssertionError` otherwise."""
        if not pairs:
            raise AssertionError("unavailable_reason() needs at least one 'precision@accelerator' pair")
        prefix = "unavailable: "
        descriptions = {pair: self.descriptions.get(pair, "(not listed)") for pair in pairs}
        reasons = {text.removeprefix(prefix) for text in descriptions.values() if text.startswith(prefix)}
        if len(reasons) != 1 or not all(text.startswith(prefix) for text in descriptions.values()):
            raise AssertionError(
                f"expected one unavailability reason for {list(pairs)}, the listing says {descriptions}"
            )
        reason = reasons.pop()
        if self.error is None or not self.error.endswith(f": {reason}."):
            raise AssertionError(f"expected the selection to be refused with {reason!r}, it said {self.error!r}")
        return reason


def probe_plugin(
    directory: str | os.PathLike[str],
    *,
    precision: str,
    accelerator: str = "cpu",
    precision_options: Mapping[str, Any] | None = None,
    hide: Sequence[str] = (),
    calls: Mapping[str, str] | None = None,
    watch: Sequence[str] = (),
    timeout: float = 300,
) -> PluginProbe:
    """List the plugins and select ``precision`` on ``accelerator`` in a fresh interpreter whose import path starts
    with ``directory`` (so what the test wrote there shadows the installed packages), with the ``hide`` modules made
    unimportable. ``calls`` maps a label to a ``"module:function"`` called without arguments after the listing (its
    result must be JSON); ``watch`` names modules whose import by then is reported. Warnings are silenced there."""
    config = {
        "hide": list(hide),
        "calls": dict(calls or {}),
        "watch": list(watch),
        "accelerator": accelerator,
        "precision": precision,
        "options": dict(precision_options or {}),
    }
    path = [str(directory), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(config)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the probe of precision={precision!r} failed:\n{result.stderr[-4000:]}")
    return PluginProbe(**json.loads(result.stdout.strip().splitlines()[-1]))


def write_distribution_metadata(directory: str | os.PathLike[str], name: str, version: str) -> Path:
    """Metadata of distribution ``name`` at ``version`` in ``directory`` (no code): with ``directory`` first on the
    path, ``importlib.metadata`` reports this version instead of the installed one."""
    info = Path(directory) / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    return info


def write_failing_package(directory: str | os.PathLike[str], module: str, message: str) -> Path:
    """A package ``module`` in ``directory`` whose import raises ``ImportError(message)``: a dependency that is
    found but broken (built for another torch, say)."""
    package = Path(directory) / module
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"raise ImportError({message!r})\n", encoding="utf-8")
    return package
