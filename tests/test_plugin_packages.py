"""Real plugin distributions, pip-installed into a throwaway venv, seen through entry points and ``prec list``.

One venv (layered over the current environment, so torch is not reinstalled) holds a good plugin, one that fails to
import, one that raises inside a hook, two that register the same keys, and two distributions that publish the
same entry-point name. A single script run inside it builds the registry under each environment-variable setting
and trains; the tests below read its JSON report.

The last tests check the metadata every published package (prec-core and each plugin under plugins/) shows on a
package index, as the build backend writes it: the project links, the license, the classifiers, and a README whose
links work outside this repository.
"""

from __future__ import annotations

import email
import json
import re
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from prec.testing import Sandbox, write_plugin_package

GOOD = """
import torch
import prec


class ToyAccelerator(prec.Accelerator):
    name = "toyacc"
    device_type = "cpu"

    def availability(self):
        return prec.Availability(True)

    def device_count(self):
        return 1


@prec.hookimpl
def prec_register_accelerators(register):
    register(ToyAccelerator)


@prec.hookimpl
def prec_register_precisions(register):
    register("32-true", "toyacc", lambda accelerator, **options: prec.Precision(**options))
    register(
        "toy-mixed",
        "cpu",
        lambda accelerator, **options: prec.MixedPrecision("toy-mixed", "cpu", torch.bfloat16, **options),
        aliases=["toym"],
        description="bfloat16 autocast under a new name",
    )
"""
BROKEN_IMPORT = 'raise ImportError("prec-toy-broken-import needs libtoy.so, which is not installed")\n'
BROKEN_HOOK = """
import prec


@prec.hookimpl
def prec_register_precisions(register):
    register("fp8-toy", "cpu", lambda accelerator: prec.Precision())
    raise RuntimeError("the fp8 kernels are missing")
"""
CLASH = """
import torch
import prec


class ClashAccelerator(prec.Accelerator):
    name = "clashacc"

    def availability(self):
        return prec.Availability(True)

    def device_count(self):
        return 1


@prec.hookimpl
def prec_register_accelerators(register):
    register(ClashAccelerator)


@prec.hookimpl
def prec_register_precisions(register):
    register("clash-true", "cpu", lambda accelerator: prec.TruePrecision("clash-true", torch.float32))
"""
DUPLICATE = """
import torch
import prec


@prec.hookimpl
def prec_register_precisions(register):
    register("{name}", "cpu", lambda accelerator: prec.TruePrecision("{name}", torch.float32))
"""

SCENARIOS = r"""
import contextlib, io, json, os, sys, warnings
import torch
import prec
from prec.cli.app import collect, render
from prec.plugin.manager import reset_registry


def build(**env):
    for key in [key for key in os.environ if key.startswith("PREC_")]:
        del os.environ[key]
    os.environ.update(env)
    reset_registry()
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        try:
            data, error = collect(), None
            text = render(data)
        except Exception as exception:
            data, error, text = None, f"{type(exception).__name__}: {exception}", None
    warned = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, prec.PluginWarning)]
    return {"data": data, "text": text, "error": error, "warnings": warned, "stderr": stderr.getvalue()}


class Regression(prec.TrainingModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x).float(), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(precision, accelerator="cpu"):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    data = list(zip(x.split(8), (x @ torch.randn(4, 1)).split(8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = prec.Trainer(
                accelerator=accelerator, precision=precision, max_epochs=2, enable_progress_bar=False
            )
            trainer.fit(Regression(), data)
        except Exception as exception:
            return {"ok": False, "error": f"{type(exception).__name__}: {exception}"}
    return {"ok": True, "precision": trainer.precision, "steps": trainer.global_step}


out = {"default": build()}
out["fit_new_precision_by_alias"] = fit("toym")
out["fit_builtin"] = fit("16-true")
out["fit_new_accelerator"] = fit("32-true", "toyacc")
out["fit_broken"] = fit("fp8-toy")
out["fit_clash_pair"] = fit("clash-true")
out["fit_clash_accelerator"] = fit("32-true", "clashacc")
out["strict"] = build(PREC_STRICT_PLUGINS="1")
out["load_only"] = build(PREC_LOAD_PLUGINS="cpu,toy")
out["disabled"] = build(PREC_DISABLED_PLUGINS="broken_import, prec-toy-broken-hook,conflict_b")
out["disabled_fit_clash_pair"] = fit("clash-true")
out["disabled_cpu"] = build(PREC_DISABLED_PLUGINS="prec-cpu")
out["disabled_cpu_fit"] = fit("32-true")
out["unknown_names"] = build(PREC_DISABLED_PLUGINS="broken_import,no-such-plugin")
out["no_autoload"] = build(PREC_DISABLE_PLUGIN_AUTOLOAD="1")
out["trace"] = build(PREC_TRACE_PLUGINS="1", PREC_LOAD_PLUGINS="cpu,toy")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("plugin-packages")
    projects = [
        write_plugin_package(root, "prec-toy-good", GOOD, entry_point="toy", version="1.2.3"),
        write_plugin_package(root, "prec-toy-broken-import", BROKEN_IMPORT, entry_point="broken_import"),
        write_plugin_package(root, "prec-toy-broken-hook", BROKEN_HOOK, entry_point="broken_hook"),
        write_plugin_package(root, "prec-toy-conflict-a", CLASH, entry_point="conflict_a"),
        write_plugin_package(root, "prec-toy-conflict-b", CLASH, entry_point="conflict_b"),
        write_plugin_package(root, "prec-toy-dup-a", DUPLICATE.format(name="dup-a-true"), entry_point="dup"),
        write_plugin_package(root, "prec-toy-dup-b", DUPLICATE.format(name="dup-b-true"), entry_point="dup"),
    ]
    environment = Sandbox.create(root / "venv")
    environment.install(*projects)
    return environment


@pytest.fixture(scope="module")
def report(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = tmp_path_factory.mktemp("scenarios") / "scenarios.py"
    script.write_text(SCENARIOS, encoding="utf-8")
    result = sandbox.run(str(script))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _plugins(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {plugin["name"]: plugin for plugin in build["data"]["plugins"]}


def test_prec_list_json_shows_plugins_with_distribution_version_and_errors(sandbox: Sandbox) -> None:
    result = sandbox.prec("list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    plugins = {plugin["name"]: plugin for plugin in data["plugins"]}
    assert plugins["toy"] | {"module": None} == {
        "name": "toy",
        "distribution": "prec-toy-good",
        "version": "1.2.3",
        "status": "ok",
        "error": None,
        "module": None,
        "reason": None,
    }
    assert plugins["broken_import"]["status"] == "error"
    assert "ImportError: prec-toy-broken-import needs libtoy.so" in plugins["broken_import"]["error"]
    assert plugins["broken_hook"]["status"] == "error"
    assert "RuntimeError: the fp8 kernels are missing" in plugins["broken_hook"]["error"]
    assert "toyacc" in data["matrix"]["32-true"] and data["matrix"]["toy-mixed"] == ["cpu"]
    assert "PluginWarning" in result.stderr and "broken_import" in result.stderr  # warned, yet it listed


def test_prec_list_table_shows_the_error_status(report: dict[str, Any]) -> None:
    lines = report["default"]["text"].splitlines()
    rows = [line for line in lines if line.startswith(("broken_import", "toy "))]
    assert any(row.split()[-1] == "error" for row in rows if row.startswith("broken_import"))
    note = next(index for index, line in enumerate(lines) if line.startswith("  broken_import: import failed"))
    assert "libtoy.so" in " ".join(lines[note : note + 3])  # the reason, wrapped under the table
    assert any("prec-toy-good" in row and "ok" in row for row in rows)


def test_broken_plugins_warn_once_each_at_load(report: dict[str, Any]) -> None:
    warned = report["default"]["warnings"]
    assert sum("'broken_import' from prec-toy-broken-import 0.1.0 failed" in text for text in warned) == 1
    assert sum("'broken_hook' from prec-toy-broken-hook 0.1.0 failed" in text for text in warned) == 1


def test_training_with_the_other_plugins_works(report: dict[str, Any]) -> None:
    assert report["fit_new_precision_by_alias"] == {"ok": True, "precision": "toy-mixed", "steps": 8}
    assert report["fit_builtin"] == {"ok": True, "precision": "16-true", "steps": 8}
    assert report["fit_new_accelerator"] == {"ok": True, "precision": "32-true", "steps": 8}


def test_asking_for_what_a_broken_plugin_provided_names_it(report: dict[str, Any]) -> None:
    error = report["fit_broken"]["error"]
    assert error.startswith("UnknownPrecisionError: precision='fp8-toy' is not a precision name")
    assert "plugin 'broken_hook' from prec-toy-broken-hook 0.1.0, which registered it and then failed" in error


def test_conflicts_name_both_distributions_and_block_the_key(report: dict[str, Any]) -> None:
    conflicts = report["default"]["data"]["conflicts"]
    both = "plugin 'conflict_a' from prec-toy-conflict-a 0.1.0 and plugin 'conflict_b' from prec-toy-conflict-b 0.1.0"
    assert any(text.startswith("precision 'clash-true' on 'cpu'") and both in text for text in conflicts)
    assert any(text.startswith("accelerator 'clashacc'") and both in text for text in conflicts)
    assert any("registered by both" in text for text in report["default"]["warnings"])
    assert report["fit_clash_pair"]["error"].startswith("UnsupportedPrecisionError: precision 'clash-true' on 'cpu'")
    assert both in report["fit_clash_pair"]["error"]
    assert report["fit_clash_accelerator"]["error"].startswith("UnknownAcceleratorError: accelerator 'clashacc'")
    assert report["disabled_fit_clash_pair"] == {"ok": True, "precision": "clash-true", "steps": 8}  # once one yields


def test_one_entry_point_name_in_two_distributions_loads_both(report: dict[str, Any]) -> None:
    plugins = _plugins(report["default"])
    assert plugins["prec-toy-dup-a:dup"]["status"] == plugins["prec-toy-dup-b:dup"]["status"] == "ok"
    assert "dup" not in plugins
    matrix = report["default"]["data"]["matrix"]
    assert matrix["dup-a-true"] == matrix["dup-b-true"] == ["cpu"]


def test_strict_mode_turns_the_first_plugin_error_into_an_exception(report: dict[str, Any]) -> None:
    assert report["strict"]["data"] is None
    assert report["strict"]["error"].startswith("PluginError: prec plugin 'broken_")
    assert "PREC_STRICT_PLUGINS is set" in report["strict"]["error"]


def test_load_plugins_loads_only_the_named_ones(report: dict[str, Any]) -> None:
    plugins = _plugins(report["load_only"])
    loaded = {name for name, plugin in plugins.items() if plugin["status"] == "ok"}
    assert loaded == {"prec.core", "cpu", "toy"}
    assert plugins["broken_import"] | {"module": None} == {
        "name": "broken_import",
        "distribution": "prec-toy-broken-import",
        "version": "0.1.0",
        "status": "disabled",
        "error": None,
        "module": None,
        "reason": "not named in PREC_LOAD_PLUGINS",
    }
    assert report["load_only"]["warnings"] == []


def test_disabled_plugins_by_entry_point_or_distribution_name(report: dict[str, Any]) -> None:
    plugins = _plugins(report["disabled"])
    for name in ("broken_import", "broken_hook", "conflict_b"):
        assert plugins[name]["status"] == "disabled" and plugins[name]["reason"] == "named in PREC_DISABLED_PLUGINS"
    assert plugins["toy"]["status"] == "ok"
    assert report["disabled"]["warnings"] == [] and report["disabled"]["data"]["conflicts"] == []


def test_a_disabled_builtin_package_is_named_when_it_is_needed(report: dict[str, Any]) -> None:
    error = report["disabled_cpu_fit"]["error"]
    assert error.startswith("UnknownAcceleratorError: accelerator='cpu' is not installed")
    assert "plugin 'cpu' from prec-cpu" in error and "which is disabled (named in PREC_DISABLED_PLUGINS)" in error
    assert "pip install prec-cpu" not in error


def test_a_name_no_plugin_has_is_reported(report: dict[str, Any]) -> None:
    warned = report["unknown_names"]["warnings"]
    assert any(
        "PREC_DISABLED_PLUGINS names 'no-such-plugin', which no installed prec plugin matches" in t for t in warned
    )
    assert not any(text.startswith("PluginWarning: prec plugin 'broken_import'") for text in warned)


def test_without_autoload_no_entry_point_is_loaded(report: dict[str, Any]) -> None:
    build = report["no_autoload"]
    assert set(_plugins(build)) == {"prec.core"}
    assert build["data"]["accelerators"] == [] and build["warnings"] == []


def test_trace_goes_to_stderr(report: dict[str, Any]) -> None:
    trace = report["trace"]["stderr"]
    assert "prec: plugin 'broken_import' disabled: not named in PREC_LOAD_PLUGINS" in trace
    assert "prec: loaded plugin 'toy' from prec-toy-good (prec_toy_good) in" in trace
    assert "prec: calling prec_register_precisions of plugin 'toy'" in trace
    assert "prec:   toy registers precision 'toy-mixed@cpu' (priority 0)" in trace


# -- the published packages' metadata ---------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(
    path.parent for path in [*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("plugins/*/pyproject.toml")]
)
REPOSITORY = "https://github.com/prec-dev/prec"
DOCUMENTATION = "https://prec-dev.github.io/prec"
LICENSE = "Apache-2.0"
# Fenced blocks and inline code are not links; what is left is searched for every way Markdown and HTML link.
CODE = re.compile(r"^(```|~~~).*?^\1[ \t]*$|`[^`\n]*`", re.MULTILINE | re.DOTALL)
LINK_TARGETS = (
    re.compile(r"\]\(\s*<?([^)\s>]+)"),  # [text](target), ![alt](target)
    re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE),  # [label]: target
    re.compile(r"\b(?:href|src)\s*=\s*[\"']([^\"']+)", re.IGNORECASE),  # <a href=...>, <img src=...>
)


def core_metadata(project: Path) -> Message:
    """The METADATA the build backend writes into the wheel (what an index shows), parsed."""
    pytest.importorskip("hatchling", reason="hatchling (every package's build backend) builds the metadata")
    from hatchling.metadata.core import ProjectMetadata
    from hatchling.metadata.spec import DEFAULT_METADATA_VERSION, get_core_metadata_constructors
    from hatchling.plugin.manager import PluginManager

    metadata = ProjectMetadata(str(project), PluginManager())
    text = get_core_metadata_constructors()[DEFAULT_METADATA_VERSION](metadata)
    return email.message_from_string(text)


def readme_links(text: str) -> list[str]:
    prose = CODE.sub("", text)
    return [match for pattern in LINK_TARGETS for match in pattern.findall(prose)]


def test_every_package_is_checked() -> None:
    names = {project.name for project in PACKAGES}
    assert names >= {"prec-core", "prec-cpu", "prec-cuda", "prec-xla", "prec-double", "prec-torchao"}, names


@pytest.mark.parametrize("project", PACKAGES, ids=lambda path: path.name)
def test_package_links_point_at_the_repository_and_the_docs(project: Path) -> None:
    urls = dict(entry.split(", ", 1) for entry in core_metadata(project).get_all("Project-URL", []))
    assert urls == {
        "Homepage": REPOSITORY,
        "Documentation": DOCUMENTATION,
        "Source": f"{REPOSITORY}/tree/main/{project.relative_to(ROOT).as_posix()}",
        "Issues": f"{REPOSITORY}/issues",
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
    }
    assert (ROOT / "CHANGELOG.md").is_file()  # the Changelog link's target


@pytest.mark.parametrize("project", PACKAGES, ids=lambda path: path.name)
def test_package_license_and_classifiers(project: Path) -> None:
    metadata = core_metadata(project)
    assert metadata["License-Expression"] == LICENSE
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (project / "LICENSE").read_text(encoding="utf-8") == (ROOT / "LICENSE").read_text(encoding="utf-8")
    classifiers = metadata.get_all("Classifier", [])  # unknown ones already failed above: the backend refuses them
    assert "Programming Language :: Python :: 3" in classifiers
    # A license expression replaces the License classifiers, which indexes refuse next to it.
    assert not [c for c in classifiers if c.startswith("License ::")], classifiers


@pytest.mark.parametrize("project", PACKAGES, ids=lambda path: path.name)
def test_package_readme_links_are_absolute(project: Path) -> None:
    """An index renders the README away from this repository, where a relative link or image is broken."""
    metadata = core_metadata(project)
    assert metadata["Description-Content-Type"] == "text/markdown"
    readme = metadata.get_payload()
    assert readme.strip() == (project / "README.md").read_text(encoding="utf-8").strip()
    relative = [target for target in readme_links(readme) if not target.startswith("https://")]
    assert not relative, f"{project.name}/README.md links to {relative}: use absolute https URLs"


def test_readme_links_are_found_however_they_are_written() -> None:
    text = "\n".join(
        [
            "[a](../a.md) and ![b](img/b.png), <img src=\"e.png\"> <a href='#f'>f</a>",
            "[c]: docs/c.md",
            "  [d]: <https://d.example>",
            "`[not](a-link)` is code, and so is this block:",
            "```python",
            "x = y[0](z)",
            "```",
        ]
    )
    assert sorted(readme_links(text)) == ["#f", "../a.md", "docs/c.md", "e.png", "https://d.example", "img/b.png"]
