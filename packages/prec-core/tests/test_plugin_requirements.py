"""prec.plugin.Requirement on real distributions: found or not, too old, broken on import, loggers quieted; and
how prec.testing.PluginProbe reads an unavailable plugin's reason."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import prec
from prec.plugin import Requirement, quiet_loggers, version_tuple
from prec.testing import PluginProbe

MISSING = "prec_requirement_that_is_not_installed"


PackageWriter = Callable[[str, str], None]


@pytest.fixture
def write_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageWriter]:
    """``write_package(name, code)``: a real top-level package on ``sys.path`` whose ``__init__`` is ``code``;
    forgotten by the import system after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, code: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(code, encoding="utf-8")
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_versions_compare_as_numbers() -> None:
    assert version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert version_tuple("0.9") < version_tuple("0.18.0")
    assert version_tuple("1.0rc1") == (1, 0) and version_tuple("nightly") == ()


def test_an_installed_distribution_new_enough_is_usable() -> None:
    requirement = Requirement("torch", plugin="prec-example", minimum="2.0")
    assert requirement.version() == torch.__version__
    assert requirement.unavailable_reason() is None
    assert requirement.import_module("example") is torch


def test_the_distribution_may_be_named_apart_from_the_module() -> None:
    requirement = Requirement("PIL", plugin="prec-example", distribution="pillow", minimum="1.0")
    assert requirement.version() is not None and requirement.unavailable_reason() is None
    assert requirement.hint == "pip install 'pillow>=1.0'"


def test_a_missing_dependency_is_named_with_the_install_hint() -> None:
    requirement = Requirement(MISSING, plugin="prec-example", minimum="1.2")
    assert requirement.version() is None
    assert requirement.unavailable_reason() == f"{MISSING} is not installed; pip install '{MISSING}>=1.2'"
    with pytest.raises(prec.UnsupportedPrecisionError) as caught:
        requirement.load("example", lambda: pytest.fail("build must not run without the dependency"))
    assert str(caught.value) == f"example precisions need {MISSING}: {requirement.unavailable_reason()}."


def test_a_dependency_blocked_in_sys_modules_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_blocked_here", None)
    reason = Requirement("torch_blocked_here", plugin="prec-example").unavailable_reason()
    assert reason == "torch_blocked_here is not installed; pip install 'torch_blocked_here'"


def test_a_release_older_than_the_minimum_names_the_plugin() -> None:
    version = Requirement("torch", plugin="prec-example").version()
    requirement = Requirement("torch", plugin="prec-example", minimum="999.0", install_hint="pip install a newer torch")
    assert requirement.unavailable_reason() == (
        f"torch {version} is too old (prec-example needs torch>=999.0); pip install a newer torch"
    )


def test_found_is_decided_without_importing(write_package: PackageWriter) -> None:
    write_package("prec_requirement_probe", "raise ImportError('must not be imported')\n")
    requirement = Requirement("prec_requirement_probe", plugin="prec-example")
    assert requirement.unavailable_reason() is None and "prec_requirement_probe" not in sys.modules


def test_an_import_failure_is_reported_with_its_error(write_package: PackageWriter) -> None:
    write_package("prec_requirement_broken", "raise ImportError('undefined symbol: _ZN3c10')\n")
    requirement = Requirement("prec_requirement_broken", plugin="prec-example", install_hint="pip install it")
    with pytest.raises(prec.UnsupportedPrecisionError) as caught:
        requirement.import_module("example")
    message = str(caught.value)
    assert message.startswith("prec_requirement_broken (unknown version) is installed but failed to import with torch")
    assert "(prec-example needs it): ImportError: undefined symbol: _ZN3c10" in message
    assert message.endswith("; pip install it.")
    assert isinstance(caught.value.__cause__, ImportError)


def test_the_quiet_loggers_are_quiet_for_the_import_only(
    write_package: PackageWriter, caplog: pytest.LogCaptureFixture
) -> None:
    code = "import logging\nlogging.getLogger('prec_requirement_noisy').warning('optional kernel missing')\n"
    write_package("prec_requirement_noisy", code)
    logger = logging.getLogger("prec_requirement_noisy")
    requirement = Requirement("prec_requirement_noisy", plugin="prec-example", quiet=("prec_requirement_noisy",))
    with caplog.at_level(logging.WARNING):
        module = requirement.import_module("example")
    assert module.__name__ == "prec_requirement_noisy" and caplog.records == []
    assert logger.level == logging.NOTSET
    with quiet_loggers(("prec_requirement_noisy",)):
        assert logger.level == logging.ERROR
    assert logger.level == logging.NOTSET


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"module": ""}, "module=''"), ({"module": "torch.nn"}, "module='torch.nn'"), ({"minimum": "new"}, "minimum")],
)
def test_bad_arguments_name_what_is_accepted(arguments: dict[str, str], named: str) -> None:
    with pytest.raises(prec.ConfigurationError, match="expected") as caught:
        Requirement(**{"module": "torch", "plugin": "prec-example", **arguments})
    assert named in str(caught.value)


def test_a_probe_reads_one_reason_from_the_listing_and_the_refusal() -> None:
    reason = "example is not installed; pip install example"
    probe = PluginProbe(
        plugins={"example": "ok"},
        descriptions={
            "ex-mixed@cpu": f"unavailable: {reason}",
            "ex-true@cpu": "runs",
            "ex-mixed@cuda": "unavailable: x",
        },
        table="",
        results={},
        listed_imports=[],
        error=f"precision='ex-mixed' comes from prec-example, which cannot run here: {reason}.",
    )
    assert probe.unavailable_reason("ex-mixed@cpu") == reason
    for pairs in (("ex-mixed@cpu", "ex-true@cpu"), ("ex-mixed@cpu", "ex-mixed@cuda"), ("missing@cpu",), ()):
        with pytest.raises(AssertionError):
            probe.unavailable_reason(*pairs)
