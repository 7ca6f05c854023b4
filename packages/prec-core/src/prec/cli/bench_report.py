"""The table ``prec bench`` prints: one row per precision from the ``--json`` document, then the noise, time-limit
and recommendation lines.

Kept apart from :mod:`prec.cli.bench` so the measuring and the wording of its output change independently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def render(data: dict[str, Any]) -> str:
    """The table for a :func:`prec.cli.bench.run_bench` document, with its notes and the recommendation."""
    header = ["precision", "native", "steps/s", "min-max", "vs 32-true", "peak MiB", "final loss", "drift"]
    rows = []
    for r in data["results"]:
        if r["error"]:
            rows.append([r["precision"], _yes(r["native"]), "error", r["error"][:60], "", "", "", ""])
            continue
        rows.append(
            [
                r["precision"],
                _yes(r["native"]),
                _num(r["steps_per_s"], ".1f"),
                f"{_num(r['steps_per_s_min'], '.1f')}-{_num(r['steps_per_s_max'], '.1f')}",
                _num(r["speedup_vs_32_true"], ".2f", "x"),
                _num(r["peak_memory_mib"], ".1f"),
                _num(r["final_loss"], ".4g"),
                _num(r["loss_drift"], ".2%"),
            ]
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{width}}}" for width in widths)
    machine = data["machine"]
    lines = [
        f"{data['model']} on {data['accelerator']} ({machine.get('cpu', '?')};"
        f" flags {', '.join(machine.get('flags', []))}; {machine['cpu_count']} cores)",
        f"{data['steps']} steps after {data['warmup']} warm-up, {data['repeats']} interleaved rounds,"
        f" {data['threads']} torch threads; medians",
        "",
        fmt.format(*header).rstrip(),
        fmt.format(*("-" * width for width in widths)).rstrip(),
        *(fmt.format(*row).rstrip() for row in rows),
        "",
        *(
            [f"Figures are noisy: {data['noise']['reason']}; rerun on a quieter machine or with more --repeats."]
            if data["noise"]["noisy"]
            else []
        ),
        *(
            [f"Stopped at --time-limit {data['time_limit']:g} s; later rounds did not run."]
            if data["time_limited"]
            else []
        ),
        f"Recommended: {data['recommendation']['precision']} ({data['recommendation']['reason']})",
        f"precision='auto' picks {data['auto']['precision']} here: {data['auto']['reason']}",
        *_why_they_differ(data),
    ]
    return "\n".join(lines)


def _why_they_differ(data: dict[str, Any]) -> list[str]:
    """One sentence when the measured recommendation and ``precision="auto"`` disagree, so the reader knows which
    to follow: ``auto`` decides from the hardware alone, before any step runs; the recommendation measured this
    model on this machine."""
    recommended, auto = data["recommendation"]["precision"], data["auto"]["precision"]
    if recommended is None or recommended == auto:
        return []
    return [
        f"They differ because precision='auto' decides from the hardware alone, before any step runs, while"
        f" {recommended} was measured on this model here: for this model pass precision={recommended!r}."
    ]


def _yes(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
