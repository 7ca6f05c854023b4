"""The conformance kit: every registered pair that runs here passes it, and each check fails when it should."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import prec
from prec.testing import CHECKS, ConformanceError, check_precision, parametrize_precisions

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


@parametrize_precisions()
def test_every_registered_pair_conforms(precision: str, accelerator: str) -> None:
    check_precision(precision, accelerator)


def test_the_built_in_cpu_pairs_are_covered() -> None:
    pairs = set(prec.testing.precision_pairs("cpu"))
    assert {("32-true", "cpu"), ("bf16-mixed", "cpu"), ("bf16-true", "cpu"), ("16-true", "cpu")} <= pairs


# -- precisions that break one rule each ------------------------------------------------------------------------
class LeaksOnException(prec.Precision):
    """Restores the default dtype only when the body succeeds."""

    @contextmanager
    def forward_context(self) -> Iterator[None]:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        yield
        torch.set_default_dtype(previous)


class ClaimsHalf(prec.Precision):
    """Declares float16 weights but never converts anything."""

    name = "claims-half"
    param_dtype = torch.float16
    compute_dtype = torch.float16


class NeverSteps(prec.Precision):
    """Forgets to step the optimizer."""

    def optimizer_step(self, optimizer: Any, closure: Any = None, *, update: bool = True, **kwargs: Any) -> None:
        return None


class ForgetsState(prec.Precision):
    """Has state to checkpoint but ignores it when loading."""

    def __init__(self) -> None:
        self.steps = 0

    def optimizer_step(self, optimizer: Any, closure: Any = None, *, update: bool = True, **kwargs: Any) -> Any:
        self.steps += 1
        return super().optimizer_step(optimizer, closure, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}


class TearsDownOnce(prec.Precision):
    def teardown(self) -> None:
        if getattr(self, "_closed", False):
            raise RuntimeError("already torn down")
        self._closed = True


def _named(cls: type[prec.Precision], name: str) -> Callable[..., prec.Precision]:
    def factory(accelerator: prec.Accelerator, **options: Any) -> prec.Precision:
        precision = cls(**options)
        precision.name = name
        return precision

    return factory


class _Plugin:
    """Registers each faulty precision above on cpu under its own name."""

    faulty = {
        "leaks-on-exception": LeaksOnException,
        "claims-half": ClaimsHalf,
        "never-steps": NeverSteps,
        "forgets-state": ForgetsState,
        "tears-down-once": TearsDownOnce,
    }

    @prec.hookimpl
    def prec_register_precisions(self, register: Any) -> None:
        for name, cls in self.faulty.items():
            register(name, "cpu", _named(cls, name))


@pytest.fixture(scope="module", autouse=True)
def faulty_plugin() -> Iterator[None]:
    name = prec.register_plugin(_Plugin(), name="faulty-precisions")
    yield
    prec.unregister_plugin(name)


@pytest.mark.parametrize(
    ("precision", "failing"),
    [
        ("leaks-on-exception", {"contexts restore global state (also on exceptions)"}),
        (
            "claims-half",
            {
                "convert_module gives param_dtype",
                "module_init_context builds in param_dtype",
                "inputs, forward_context and outputs in the declared dtypes",
            },
        ),
        ("never-steps", {"a short fit decreases the loss", "Trainer.fit trains with it"}),
        ("forgets-state", {"state_dict round-trips through torch.save"}),
        ("tears-down-once", {"teardown is idempotent"}),
    ],
)
def test_each_check_catches_its_violation(precision: str, failing: set[str]) -> None:
    with pytest.raises(ConformanceError) as error:
        check_precision(precision, "cpu")
    report = error.value.report
    assert {result.name for result in report.failures} == failing
    assert f"precision {precision!r} on 'cpu' FAILS {len(failing)} of {len(CHECKS)} checks" in str(error.value)
    assert torch.get_default_dtype() == torch.float32  # the kit restores what a failing precision leaked


def test_a_report_without_raising() -> None:
    report = check_precision("tears-down-once", "cpu", raise_on_failure=False)
    assert not report.ok and [result.name for result in report.failures] == ["teardown is idempotent"]
    assert "RuntimeError: already torn down" in report.failures[0].detail
    assert "[ok] a short fit decreases the loss" in str(report)


def test_options_reach_the_factory() -> None:
    report = check_precision("bf16-mixed", "cpu", options={"cache_enabled": False})
    assert report.ok


@pytest.mark.parametrize("name", ["32-true", "bf16-mixed"])
def test_train_losses_is_a_loop_of_your_own_that_learns(name: str) -> None:
    """prec.testing.train_losses, which the plugins' GPU tests train with, on the CPU."""
    from prec.testing import train_losses

    precision = prec.get_precision(name, "cpu")
    torch.manual_seed(0)
    model = precision.convert_module(
        torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    )
    frozen = model[0].bias
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    losses = train_losses(precision, model, x, y, steps=20, lr=1e-2)
    assert len(losses) == 20 and all(isinstance(loss, float) for loss in losses)
    assert losses[-1] < 0.7 * losses[0]
    assert torch.equal(frozen, before)  # only trainable parameters are stepped
