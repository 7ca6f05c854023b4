"""The Markdown table of a step_bench record: one row per mode, prec next to raw torch."""

from __future__ import annotations

import re
from typing import Any


def slug(device: str) -> str:
    """A file-name-safe form of a device name: ``NVIDIA H100 80GB HBM3 (sm_90)`` -> ``nvidia-h100-80gb-hbm3-sm_90``."""
    return re.sub(r"[^a-z0-9_]+", "-", device.lower()).strip("-") or "device"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _short(text: str, limit: int = 160) -> str:
    """The first sentence, at most ``limit`` characters, safe in a table cell (the JSON keeps the whole text)."""
    text = text.split(". ")[0].replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(record: dict[str, Any]) -> str:
    size = record["size"]
    lines = [
        f"# Transformer training step on {record['device']}",
        "",
        f"torch {record['torch']}, prec {record['prec']}; {size['layers']} layers of width {size['width']}"
        f" ({size['heads']} heads), {size['batch']} x {size['seq']} tokens, vocabulary {size['vocab']}; AdamW."
        f" prec: {record['loop']}. Median of {record['steps']} steps after {record['warmup']} warm-up steps."
        " Peak memory: allocated by the run (GPU only). Syncs: host-device synchronisations per step, counted with"
        " torch's sync debug mode" + ("" if record["sync_counter_verified"] else " (not available here)") + ".",
        "",
        "| mode | prec ms/step | raw ms/step | prec/raw | prec vs 32-true | prec peak MiB | raw peak MiB"
        " | prec syncs/step | raw syncs/step | raw recipe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((row["prec"]["step_ms"] for row in record["results"] if row["mode"] == "32-true"), None)
    for row in record["results"]:
        ours, raw = row["prec"], row["raw"] or {}
        ratio = ours["step_ms"] / raw["step_ms"] if raw else None
        versus = ours["step_ms"] / base if base else None
        cells = [
            row["mode"], _number(ours["step_ms"], 3), _number(raw.get("step_ms"), 3), _number(ratio),
            _number(versus), _number(ours["peak_mib"], 0), _number(raw.get("peak_mib"), 0),
            _number(ours["syncs_per_step"]), _number(raw.get("syncs_per_step")), row["raw_recipe"] or "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"| {item['mode']} | skipped: {_short(item['reason'])} |" + " |" * 8 for item in record["skipped"]]
    lines += [f"| {item['mode']} | FAILED: {_short(item['error'])} |" + " |" * 8 for item in record["errors"]]
    return "\n".join(lines) + "\n"
