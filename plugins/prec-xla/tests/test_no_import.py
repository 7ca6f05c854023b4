"""``import prec``, ``prec list`` and CPU training never import torch_xla: each runs in a fresh interpreter.

Run twice: in the environment as it is (in the ``xla`` environment that is a real, working torch_xla), and with
a stub torch_xla whose import raises, installed with matching metadata and ``PJRT_DEVICE=CPU`` so that xla is
reported available and its device count is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from prec_xla import detect

CHECK = """
import json, sys
import prec, prec_xla
registry = prec.get_registry()
from prec.cli.app import collect, main
data = collect()
main(["list"], standalone_mode=False)

import torch
from torch.utils.data import DataLoader, TensorDataset

class Net(prec.TrainingModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data_set = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
trainer = prec.Trainer(accelerator="cpu", max_steps=2, enable_progress_bar=False)
trainer.fit(Net(), DataLoader(data_set, batch_size=4))
xla = next(acc for acc in data["accelerators"] if acc["name"] == "xla")
plugin = next(p for p in data["plugins"] if p["distribution"] == "prec-xla")
loaded = sorted(name for name in sys.modules if name.startswith("torch_xla"))
print("RESULT " + json.dumps({"xla": xla, "plugin": plugin, "loaded": loaded}))
"""


def run_check(extra_path: Path | None = None) -> tuple[dict[str, object], str]:
    env = dict(os.environ, PJRT_DEVICE="CPU", PREC_STRICT_PLUGINS="1")
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), done.stdout


def test_environment_as_is_never_imports_torch_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    result, listing = run_check()
    assert result["loaded"] == []
    assert result["plugin"]["status"] == "ok"
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    expected = detect.probe()
    xla = result["xla"]
    assert (xla["aliases"], xla["available"], xla["reason"]) == (["tpu"], bool(expected), expected.reason)
    assert "xla   tpu" in listing


def test_listed_as_available_without_importing_torch_xla(
    tmp_path: Path, stub_factory: Callable[[Path, str], Path]
) -> None:
    major, minor = detect.release(detect.installed_version("torch") or "") or (0, 0)
    root = stub_factory(tmp_path / "stub", f"{major}.{minor}.0")
    result, listing = run_check(root)
    assert result["loaded"] == []
    assert result["plugin"]["status"] == "ok"
    assert result["xla"]["available"] is True
    assert result["xla"]["devices"] == 1
    assert result["xla"]["reason"] == "XLA on the host CPU (PJRT_DEVICE=CPU)"
    assert "XLA on the host CPU" in listing


@pytest.mark.parametrize("value", ["1", "not-a-number"])
def test_cpu_num_devices_is_read_safely(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", value)
    assert detect.device_count() == 1
