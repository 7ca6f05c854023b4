"""End to end: a plugin package installed during the test is discovered through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_MODULE = textwrap.dedent(
    '''
    """A throwaway plugin: a new precision name on cpu."""
    import torch
    import prec


    class HalfTrue(prec.TruePrecision):
        pass


    @prec.hookimpl
    def prec_register_precisions(register):
        register(
            "fp16-weights",
            "cpu",
            lambda accelerator, **options: HalfTrue("fp16-weights", torch.float16, device_type="cpu"),
            description="float16 weights under a new name",
        )
    '''
)

PYPROJECT = textwrap.dedent(
    """
    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"

    [project]
    name = "prec-throwaway"
    version = "0.0.7"
    dependencies = []

    [project.entry-points.prec]
    throwaway = "prec_throwaway"

    [tool.hatch.build.targets.wheel]
    packages = ["prec_throwaway"]
    """
)

TRAIN = textwrap.dedent(
    """
    import torch, prec
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

    model = Net()
    trainer = prec.Trainer(accelerator="cpu", precision="fp16-weights", max_steps=3, enable_progress_bar=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(12, 4), torch.randn(12, 1)), batch_size=4))
    print(type(trainer.precision_plugin).__module__, model.layer.weight.dtype, trainer.global_step)
    """
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and install the throwaway package with pip into its own directory (not into this environment)."""
    root = tmp_path_factory.mktemp("throwaway")
    package = root / "src"
    (package / "prec_throwaway").mkdir(parents=True)
    (package / "prec_throwaway" / "__init__.py").write_text(PLUGIN_MODULE)
    (package / "pyproject.toml").write_text(PYPROJECT)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(package)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    return target


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, check=False)


def test_installed_plugin_appears_in_prec_list(site: Path) -> None:
    result = _run(site, "-m", "prec.cli.app", "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    plugins = {plugin["name"]: plugin for plugin in data["plugins"]}
    assert plugins["throwaway"]["distribution"] == "prec-throwaway"
    assert plugins["throwaway"]["version"] == "0.0.7" and plugins["throwaway"]["status"] == "ok"
    assert data["matrix"]["fp16-weights"] == ["cpu"]


def test_installed_plugin_trains(site: Path) -> None:
    result = _run(site, "-c", TRAIN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["prec_throwaway", "torch.float16", "3"]


def test_without_the_package_the_name_is_unknown() -> None:
    code = (
        "import prec\n"
        "try:\n    prec.Trainer(precision='fp16-weights')\n"
        "except prec.UnknownPrecisionError:\n    print('unknown')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "unknown", result.stderr
