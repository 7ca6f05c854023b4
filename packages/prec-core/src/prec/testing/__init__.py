"""``prec.testing``: what a precision plugin author runs from their own test suite.

The conformance kit checks what every precision must honour (global state restored, declared dtypes, a short
fit that learns, state round-trips, idempotent teardown)::

    from prec.testing import check_precision, parametrize_precisions

    def test_my_precision():
        check_precision("fp8-mixed", accelerator="cuda")      # raises ConformanceError with a report

    @parametrize_precisions(accelerator="cpu")                # every registered cpu pair
    def test_all(precision, accelerator):
        check_precision(precision, accelerator)

:class:`Sandbox` installs distributions into a throwaway virtual environment, to test a plugin installed the way
a user installs it (entry points, ``prec list``) without touching the development environment.

:func:`train_losses` is a classifier's loop of your own through the Precision API, for tests on real hardware.

:func:`probe_plugin` lists the plugins and selects a precision in a fresh interpreter where the plugin's optional
dependency is hidden, too old (:func:`write_distribution_metadata`) or broken (:func:`write_failing_package`).
"""

from __future__ import annotations

from prec.testing.conformance import (
    CHECKS,
    CheckResult,
    ConformanceError,
    ConformanceReport,
    check_precision,
    global_state,
    parametrize_precisions,
    precision_pairs,
)
from prec.testing.dependency import PluginProbe, probe_plugin, write_distribution_metadata, write_failing_package
from prec.testing.loops import train_losses
from prec.testing.sandbox import Sandbox, write_plugin_package

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "PluginProbe",
    "Sandbox",
    "check_precision",
    "global_state",
    "parametrize_precisions",
    "precision_pairs",
    "probe_plugin",
    "train_losses",
    "write_distribution_metadata",
    "write_failing_package",
    "write_plugin_package",
]
