"""Without a usable torchao the package says why instead of breaking discovery.

Each case runs in a fresh interpreter whose path starts with a directory that hides the real torchao: nothing at
all (``sys.modules['torchao'] = None``), metadata of an old release, or a ``torchao`` package whose import fails.
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
    import prec_torchao

    data = collect()
    result = {{
        "reason": prec_torchao.unavailable_reason(),
        "plugins": {{p["name"]: p["status"] for p in data["plugins"]}},
        "descriptions": {{f"{{p['name']}}@{{p['accelerator']}}": p["description"] for p in data["precisions"]}},
        "table": render(data),
    }}
    try:
        prec.Trainer(accelerator="cpu", precision="fp8-mixed", precision_options={{"emulate": True}})
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


def assert_discovery_intact(result: dict) -> None:
    assert set(result["plugins"].values()) == {"ok"} and "torchao" in result["plugins"]
    assert "bf16-mixed" in result["table"] and "fp8-mixed" in result["table"]


def test_not_installed(tmp_path: Path) -> None:
    result = probe(tmp_path, setup="sys.modules['torchao'] = None")
    assert_discovery_intact(result)
    assert result["reason"].startswith("torchao is not installed; pip install 'torchao>=0.18.0'")
    for name in ("fp8-mixed@cpu", "mxfp8-mixed@cuda", "int8-mixed@cpu"):
        assert result["descriptions"][name] == f"unavailable: {result['reason']}"
    assert (
        result["error"] == f"precision='fp8-mixed' comes from prec-torchao, which cannot run here: {result['reason']}."
    )


def test_too_old(tmp_path: Path) -> None:
    info = tmp_path / "torchao-0.5.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchao\nVersion: 0.5.0\n")
    result = probe(tmp_path)
    assert_discovery_intact(result)
    assert "torchao 0.5.0 is too old (prec-torchao needs torchao>=0.18.0)" in result["reason"]
    assert result["reason"] in result["error"] and result["reason"] in result["descriptions"]["fp8-bf16-true@cuda"]


def test_installed_but_broken(tmp_path: Path) -> None:
    (tmp_path / "torchao").mkdir()
    (tmp_path / "torchao" / "__init__.py").write_text(
        "raise ImportError('undefined symbol: _ZN3c1017RegisterOperators (built for another torch)')\n"
    )
    result = probe(tmp_path)
    assert_discovery_intact(result)
    assert result["reason"] is None  # found without importing it: the failure shows at selection
    error = result["error"]
    assert "is installed but failed to import with torch" in error and "undefined symbol" in error, error
    # this torchao has no MXFP8 training files: the MX name says so without importing it, the others do not
    assert result["descriptions"]["mxfp8-mixed@cpu"].startswith("unavailable: torchao 0.18.0 has no")
    assert "torchao.prototype.moe_training.mxfp8_linear" in result["descriptions"]["mxfp8-mixed@cuda"]
    assert not result["descriptions"]["int8-mixed@cpu"].startswith("unavailable")


def test_installed_here() -> None:
    import prec_torchao

    assert prec_torchao.unavailable_reason() is None and prec_torchao.torchao_version() == "0.18.0"
