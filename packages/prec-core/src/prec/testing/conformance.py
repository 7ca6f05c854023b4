"""The precision conformance kit: one function, one report, every check isolated from the others."""

from __future__ import annotations

import io
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from prec.errors import ConfigurationError
from prec.model.module import TrainingModule
from prec.precision import Precision
from prec.trainer import Trainer
from prec.training.composition import get_precision, get_registry

STEPS = 40


class ConformanceError(AssertionError):
    """A precision failed one or more conformance checks; the message is the whole report."""

    def __init__(self, report: ConformanceReport) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    """The outcome of :func:`check_precision`: one :class:`CheckResult` per check, in order."""

    precision: str
    accelerator: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.passed]

    def __str__(self) -> str:
        verdict = "conforms" if self.ok else f"FAILS {len(self.failures)} of {len(self.results)} checks"
        lines = [f"precision {self.precision!r} on {self.accelerator!r} {verdict}:"]
        for result in self.results:
            lines.append(f"  [{'ok' if result.passed else 'FAIL'}] {result.name}")
            lines += [f"         {line}" for line in result.detail.splitlines() if not result.passed]
        return "\n".join(lines)


def global_state(device_types: tuple[str, ...] = ("cpu",)) -> dict[str, Any]:
    """The torch state a precision may change only inside its contexts: default dtype, grad mode and, for each
    device type, whether autocast is on and its dtype."""
    from prec.precision.tf32 import float32_math_settings

    state: dict[str, Any] = {"default dtype": torch.get_default_dtype(), "grad enabled": torch.is_grad_enabled()}
    state.update({f"float32 math: {key}": value for key, value in float32_math_settings().items()})
    for device_type in dict.fromkeys(device_types):
        try:
            state[f"autocast enabled ({device_type})"] = torch.is_autocast_enabled(device_type)
            state[f"autocast dtype ({device_type})"] = torch.get_autocast_dtype(device_type)
        except RuntimeError:  # a device type torch's autocast does not know has no autocast state to leak
            continue
    return state


class _Case:
    """Everything one check needs: a fresh precision from the registry, the device, the state to restore."""

    def __init__(self, name: str, accelerator: str, options: dict[str, Any]) -> None:

        self.name, self.accelerator_name, self.options = name, accelerator, options
        self.make: Callable[[], Precision] = lambda: get_precision(name, accelerator, **options)
        self.accelerator = get_registry().available_accelerator(accelerator)
        self.device = self.accelerator.get_device(0)
        self.device_types = ("cpu", self.device.type)

    def state(self) -> dict[str, Any]:
        return global_state(self.device_types)

    def model(self, precision: Precision) -> torch.nn.Module:
        torch.manual_seed(0)
        with precision.module_init_context():
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        model = precision.convert_module(model).to(self.device)
        return _Adapted(model) if _frozen(model) else model


def _frozen(model: torch.nn.Module) -> bool:
    """Whether the precision froze every Linear weight (quantized fine-tuning stores them in integer formats)."""
    weights = [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return bool(weights) and not any(weight.requires_grad for weight in weights)


class _Adapted(torch.nn.Module):
    """The kit's model with a trainable float32 adapter beside frozen quantized layers, as a user fine-tuning
    such a model adds one: the fit checks then test what the precision leaves trainable."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body
        first = next(p for p in body.parameters())
        self.adapter = torch.nn.Parameter(torch.zeros(8, device=first.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + (x.to(out.dtype) * self.adapter.to(out.dtype)).sum(-1, keepdim=True)


def _same_state(case: _Case, before: dict[str, Any], what: str) -> None:
    after = case.state()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    if changed:
        text = ", ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
        raise AssertionError(f"{what} left global state changed: {text}")


def _contexts(precision: Precision) -> Iterator[tuple[str, Callable[[], AbstractContextManager[Any]]]]:
    yield "forward_context()", precision.forward_context
    yield "tensor_init_context()", precision.tensor_init_context
    yield "module_init_context()", precision.module_init_context


def check_contexts_restore_state(case: _Case) -> None:
    precision = case.make()
    for label, make_context in _contexts(precision):
        before = case.state()
        with make_context():
            torch.ones(1)
        _same_state(case, before, label)
        try:
            with make_context():
                raise _Sentinel
        except _Sentinel:
            pass
        _same_state(case, before, f"{label} exited by an exception")


class _Sentinel(Exception):
    """Raised inside a context to prove it restores state on the way out of an exception."""


def check_declared_dtypes(case: _Case) -> None:
    precision = case.make()
    for attribute in ("param_dtype", "compute_dtype"):
        value = getattr(precision, attribute)
        if not (isinstance(value, torch.dtype) and value.is_floating_point):
            raise AssertionError(f"{attribute} must be a floating torch.dtype, got {value!r}")
    if precision.name != case.name:
        raise AssertionError(f"get_precision({case.name!r}) returned a precision named {precision.name!r}")


def check_convert_module(case: _Case) -> None:
    precision = case.make()
    model = torch.nn.BatchNorm1d(4)  # float parameters and buffers plus an integer buffer
    converted = precision.convert_module(model)
    floats = {name: t.dtype for name, t in [*converted.named_parameters(), *converted.named_buffers()]}
    wrong = {name: dtype for name, dtype in floats.items() if name != "num_batches_tracked"}
    wrong = {name: dtype for name, dtype in wrong.items() if dtype != precision.param_dtype}
    if wrong:
        raise AssertionError(f"convert_module left {wrong}; param_dtype is {precision.param_dtype}")
    if floats["num_batches_tracked"] != torch.long:
        raise AssertionError(f"convert_module cast the integer buffer to {floats['num_batches_tracked']}")


def check_init_module(case: _Case) -> None:
    precision = case.make()
    before = case.state()
    with precision.module_init_context():
        layer = torch.nn.Linear(4, 4)
    _same_state(case, before, "module_init_context()")
    dtypes = {param.dtype for param in layer.parameters()}
    # A quantizing precision declares the storage its frozen weights take (``produced_param_dtypes``).
    allowed = {precision.param_dtype, *precision.produced_param_dtypes()}
    if precision.param_dtype not in dtypes or not dtypes <= allowed:
        raise AssertionError(f"a Linear built in module_init_context() has {dtypes}, not {precision.param_dtype}")


def check_inputs_and_outputs(case: _Case) -> None:
    precision = case.make()
    batch = {"x": torch.randn(2, 8), "index": torch.arange(2)}
    converted = precision.convert_input(batch)
    if converted["index"].dtype != torch.long:
        raise AssertionError(f"convert_input cast an integer tensor to {converted['index'].dtype}")
    model = case.model(precision)
    with precision.forward_context():
        output = model(converted["x"].to(case.device))
    if output.dtype != precision.compute_dtype:
        raise AssertionError(
            f"forward_context computes in {output.dtype}, but compute_dtype is {precision.compute_dtype}"
        )
    # float32 unless the precision declares another ``output_dtype`` (None: outputs stay in the compute dtype).
    expected = getattr(precision, "output_dtype", torch.float32) or precision.compute_dtype
    result = precision.convert_output({"y": output, "index": torch.arange(2)})
    if result["y"].dtype != expected or result["index"].dtype != torch.long:
        got = f"{result['y'].dtype} / {result['index'].dtype}"
        raise AssertionError(f"convert_output gave {got}, not {expected} / torch.int64")


def _fit(case: _Case, precision: Precision, steps: int) -> tuple[float, float]:
    """A plain loop through the Precision API (the one a user writes without the Trainer)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 8, generator=generator)
    targets = features @ torch.randn(8, 1, generator=generator)
    model = case.model(precision)
    precision.setup_module(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    precision.setup_optimizer(optimizer)
    losses = []
    for step in range(steps):
        x = precision.convert_input(features[step % 4 :: 4].to(case.device))
        y = targets[step % 4 :: 4].to(case.device)
        with precision.forward_context():
            output = model(x)
        loss = torch.nn.functional.mse_loss(precision.convert_output(output), y)
        precision.backward(loss, model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    metrics = precision.metrics()
    if not all(isinstance(key, str) and isinstance(value, float) for key, value in metrics.items()):
        raise AssertionError(f"metrics() must return dict[str, float], got {metrics!r}")
    return sum(losses[:4]) / 4, sum(losses[-4:]) / 4


def check_fit_decreases_loss(case: _Case) -> None:
    first, last = _fit(case, case.make(), STEPS)
    if not last < 0.8 * first:
        raise AssertionError(f"{STEPS} SGD steps took the loss from {first:.4g} to {last:.4g} (expected < 80%)")


def check_trainer_fit(case: _Case) -> None:

    class Regression(TrainingModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)
            self.adapter = torch.nn.Parameter(torch.zeros(8))  # used only beside a frozen (quantized) layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.layer(x).float()
            if _frozen(self.layer):
                out = out + (x.float() * self.adapter).sum(-1, keepdim=True)
            return out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    features = torch.randn(64, 8)
    data = list(zip(features.split(16), (features @ torch.randn(8, 1)).split(16), strict=True))
    trainer = Trainer(
        accelerator=case.accelerator_name,
        devices=1,
        precision=case.name,
        precision_options=case.options,
        max_epochs=5,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    model = Regression()
    with torch.no_grad():
        before = torch.stack([torch.nn.functional.mse_loss(model(x), y) for x, y in data]).mean().item()
    trainer.fit(model, data)
    plugin = trainer.precision_plugin
    device = model.adapter.device
    with torch.no_grad(), plugin.forward_context():  # the trained model, run as the precision runs it
        losses = [torch.nn.functional.mse_loss(model(plugin.convert_input(x.to(device))).float(), y.to(device))
                  for x, y in data]  # fmt: skip
    after = torch.stack(losses).mean().item()
    if trainer.precision != case.name or not after < before:
        raise AssertionError(
            f"Trainer(precision={case.name!r}) ran {trainer.precision}: loss {before:.4g} -> {after:.4g}"
        )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def check_state_dict_round_trip(case: _Case) -> None:
    trained = case.make()
    _fit(case, trained, 6)
    state = trained.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # a checkpoint must hold it
    buffer.seek(0)
    fresh = case.make()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    if not _equal(fresh.state_dict(), state):
        raise AssertionError(f"state_dict() after load_state_dict() differs:\n{fresh.state_dict()!r}\nvs\n{state!r}")


def check_teardown_idempotent(case: _Case) -> None:
    precision = case.make()
    before = case.state()
    setup = getattr(precision, "setup", None)
    if callable(setup):  # the run-start hook: global settings (32-true's float32 math) undone by teardown()
        setup()
    _fit(case, precision, 2)
    precision.teardown()
    precision.teardown()
    _same_state(case, before, "fit and teardown() twice")


CHECKS: dict[str, Callable[[_Case], None]] = {
    "declared dtypes": check_declared_dtypes,
    "contexts restore global state (also on exceptions)": check_contexts_restore_state,
    "convert_module gives param_dtype": check_convert_module,
    "module_init_context builds in param_dtype": check_init_module,
    "inputs, forward_context and outputs in the declared dtypes": check_inputs_and_outputs,
    "a short fit decreases the loss": check_fit_decreases_loss,
    "Trainer.fit trains with it": check_trainer_fit,
    "state_dict round-trips through torch.save": check_state_dict_round_trip,
    "teardown is idempotent": check_teardown_idempotent,
}


def check_precision(
    precision: str, accelerator: str = "cpu", *, options: dict[str, Any] | None = None, raise_on_failure: bool = True
) -> ConformanceReport:
    """Run every conformance check on the registered ``precision`` × ``accelerator`` pair.

    Each check gets a fresh precision from :func:`prec.get_precision`, so one failure does not hide another.
    Raises :class:`ConformanceError` (an ``AssertionError`` carrying the report) when a check fails, unless
    ``raise_on_failure=False``; global torch state is restored either way.
    """
    case = _Case(precision, accelerator, dict(options or {}))
    report = ConformanceReport(precision, accelerator)
    for name, check in CHECKS.items():
        saved = case.state()
        try:
            check(case)
        except Exception as error:  # noqa: BLE001 - every failure belongs in the report
            frames = traceback.format_exception(type(error), error, error.__traceback__, limit=-3)
            detail = str(error) if isinstance(error, AssertionError) else "".join(frames).rstrip()
            report.results.append(CheckResult(name, False, detail))
        else:
            report.results.append(CheckResult(name, True))
        finally:
            torch.set_default_dtype(saved["default dtype"])
            torch.set_grad_enabled(saved["grad enabled"])
    if raise_on_failure and not report.ok:
        raise ConformanceError(report)
    return report


#: Option sets of the built-in precisions beyond their defaults, which the kit also checks (see :func:`modes`).
MODES: dict[str, tuple[dict[str, Any], ...]] = {
    "32-true": ({"tf32": True}, {"keep_float32": ["0"]}),
    "bf16-true": (
        {"master_weights": "fp32"},
        {"master_weights": "kahan"},
        {"master_weights": "stochastic"},
        {"keep_float32": ["1"]},
        {"master_weights": "fp32", "keep_float32": ["1"]},
    ),
    "16-true": ({"master_weights": "fp32"}, {"keep_float32": ["1"]}),
    "bf16-mixed": ({"keep_float32": ["1"]},),
    "16-mixed": ({"keep_float32": ["1"]},),
    "64-true": ({"keep_float32": ["1"]},),
}


def modes(accelerator: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(precision, accelerator, options)`` for every available pair and each of its :data:`MODES` (the
    default options first): pass them to :func:`check_precision` to check every mode a precision offers."""
    return [
        (name, acc, options) for name, acc in precision_pairs(accelerator) for options in ({}, *MODES.get(name, ()))
    ]


def precision_pairs(accelerator: str | None = None) -> list[tuple[str, str]]:
    """Every registered (precision, accelerator) pair whose accelerator is available here, or only those of
    ``accelerator``. Pairs whose accelerator is missing or unavailable are left out."""

    registry = get_registry()
    pairs = []
    for name, acc in sorted(registry.precisions):
        if accelerator is not None and acc != registry.canonical_accelerator(accelerator):
            continue
        try:
            registry.available_accelerator(acc)
        except ConfigurationError:
            continue
        pairs.append((name, acc))
    return pairs


def parametrize_precisions(accelerator: str | None = None) -> Any:
    """``pytest.mark.parametrize("precision, accelerator", precision_pairs(accelerator))`` with readable ids."""
    import pytest

    pairs = precision_pairs(accelerator)
    return pytest.mark.parametrize(("precision", "accelerator"), pairs, ids=[f"{n}@{a}" for n, a in pairs])
