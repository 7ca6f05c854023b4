"""The same training, four ways: a raw PyTorch loop, prec's Trainer, Lightning's Trainer and Lightning Fabric.

Each runner builds its model from the same seed, trains on the same list of batches for ``len(batches)`` steps
and ticks the clock at the top of every step. Frameworks run with everything that is not training switched off
(progress bars, loggers, checkpointing, model summaries), so the comparison is of the training loop itself.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from _harness import Batches, StepClock, build_net, loss_of

LR = 0.01


# -- raw PyTorch ----------------------------------------------------------------------------------------------
def run_raw(precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool) -> None:
    """What a user writes by hand: autocast for bf16-mixed; a bf16 model and input cast for bf16-true."""
    net = build_net(sizes)
    tick = clock.tick
    if precision == "bf16-true":
        net = net.to(torch.bfloat16)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    if precision == "32-true":
        for batch in batches:
            tick()
            loss = loss_of(net, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif precision == "bf16-mixed":
        for batch in batches:
            tick()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_of(net, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif precision == "bf16-true":
        for x, y in batches:
            tick()
            loss = loss_of(net, (x.to(torch.bfloat16), y.to(torch.bfloat16)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        raise ValueError(f"the raw loop has no recipe for {precision!r}")


def run_raw_module(precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool) -> None:
    """The raw loop around the frameworks' own module: the same ``training_step`` (``self.net``, the clock) on a
    plain ``nn.Module``, and no framework. Next to ``raw`` it prices the model code a module-based step runs
    anyway (``self.net`` on an ``nn.Module`` is a failed attribute lookup and ``Module.__getattr__``)."""
    model = _model_class(torch.nn.Module, sizes, clock, False)()
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    elif precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"the raw loop has no recipe for {precision!r}")
    optimizer = model.configure_optimizers()
    training_step = model.training_step
    for batch_idx, batch in enumerate(batches):
        if precision == "bf16-mixed":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = training_step(batch, batch_idx)
        else:
            if precision == "bf16-true":
                batch = (batch[0].to(torch.bfloat16), batch[1].to(torch.bfloat16))
            loss = training_step(batch, batch_idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# -- prec ------------------------------------------------------------------------------------------------------
def run_prec(
    precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool, **extra: Any
) -> None:
    import prec

    Model = _model_class(prec.TrainingModule, sizes, clock, log)
    with tempfile.TemporaryDirectory() as root:
        trainer = prec.Trainer(**_prec_options(precision, len(batches), root), **extra)
        trainer.fit(Model(), Batches(batches))


def run_prec_unguarded(precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool) -> None:
    """prec with the non-finite guard off: the difference to ``run_prec`` is what the guard costs."""
    run_prec(precision, sizes, batches, clock, log, nonfinite="off")


def _model_class(base: type, sizes: Sequence[int], clock: StepClock, log: bool) -> type:
    """The same module for every framework (``base`` is its module class), so each runs identical work."""

    class Model(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = build_net(sizes)
            self.__dict__["tick"] = clock.tick

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.tick()
            loss = loss_of(self.net, batch)
            if log:
                self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    return Model


def _prec_options(precision: str, steps: int, root: str) -> dict[str, Any]:
    import prec

    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": precision,
        "max_steps": steps,
        "enable_progress_bar": False,
        "default_root_dir": root,
    }
    accepted = inspect.signature(prec.Trainer).parameters
    for name, off in (("logger", False), ("enable_checkpointing", False), ("enable_model_summary", False)):
        if name in accepted:  # switch off whatever the Trainer offers that a raw loop does not do
            options[name] = off
    return options


# -- Lightning ---------------------------------------------------------------------------------------------------
def run_lightning(precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool) -> None:
    import lightning as L

    Model = _model_class(L.LightningModule, sizes, clock, log)

    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision,
            max_steps=len(batches),
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(Model(), Batches(batches))


def run_fabric(precision: str, sizes: Sequence[int], batches: list[Any], clock: StepClock, log: bool) -> None:
    import lightning as L

    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    net = build_net(sizes)
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=LR))
    tick = clock.tick
    for batch in batches:
        tick()
        loss = loss_of(model, batch)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


RUNNERS = {
    "raw": (run_raw, False),
    "raw-module": (run_raw_module, False),
    "prec": (run_prec, False),
    "prec+log": (run_prec, True),
    "prec-unguarded": (run_prec_unguarded, False),
    "lightning": (run_lightning, False),
    "lightning+log": (run_lightning, True),
    "fabric": (run_fabric, False),
}
NEEDS_LIGHTNING = {"lightning", "lightning+log", "fabric"}
