"""Without a usable bitsandbytes the package says what to install instead of breaking discovery.

Each case runs in a fresh interpreter whose path starts with a directory that hides the real bitsandbytes:
nothing at all (``sys.modules['bitsandbytes'] = None``) or metadata of an old release.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TIMEOUT_S = 300  # a hang guard: each run takes seconds

PROBE = textwrap.dedent(
    """
    import json, sys
    {setup}
    import prec
    from prec.cli.app import collect, render
    import prec_bnb

    data = collect()
    result = {{
        "reason": prec_bnb.unavailable_reason(),
        "plugins": {{p["name"]: p["status"] for p in data["plugins"]}},
        "descriptions": {{f"{{p['name']}}@{{p['accelerator']}}": p["description"] for p in data["precisions"]}},
        "table": render(data),
        "imported": "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is not None,
    }}
    try:
        prec.Trainer(accelerator="cpu", precision="bnb-nf4")
    except prec.UnsupportedPrecisionError as error:
        result["error"] = str(error)
    print(json.dumps(result))
    """
)


def probe(tmp_path: Path, setup: str = "") -> dict:
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(setup=setup))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_not_installed(tmp_path: Path) -> None:
    result = probe(tmp_path, setup="sys.modules['bitsandbytes'] = None")
    assert result["plugins"]["bnb"] == "ok" and "bnb-nf4" in result["table"]
    assert result["reason"] == "bitsandbytes is not installed; pip install 'bitsandbytes>=0.50.2'"
    assert result["descriptions"]["bnb-nf4@cpu"] == f"unavailable: {result['reason']}"
    assert result["descriptions"]["bnb-int8@cuda"] == f"unavailable: {result['reason']}"
    assert result["error"] == f"precision='bnb-nf4' comes from prec-bnb, which cannot run here: {result['reason']}."


def test_too_old(tmp_path: Path) -> None:
    info = tmp_path / "bitsandbytes-0.41.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.41.0\n")
    result = probe(tmp_path)
    assert "bitsandbytes 0.41.0 is too old (prec-bnb needs bitsandbytes>=0.50.2)" in result["reason"]
    assert result["reason"] in result["error"] and result["reason"] in result["descriptions"]["bnb-fp4@cpu"]


def test_installed_here_and_listing_does_not_import_it(tmp_path: Path) -> None:
    result = probe(tmp_path)
    assert result["reason"] is None and "error" not in result
    assert result["imported"] is False  # prec list asked the metadata only
    assert result["descriptions"]["bnb-nf4@cpu"].startswith("frozen 4-bit NormalFloat Linear weights")
    assert "bnb-int8-training@cpu" not in result["descriptions"] and "bnb-int8-training@cuda" in result["descriptions"]
