"""True precisions that keep their updates: 16-bit weights in the model, updates that are not rounded away.

A bfloat16 weight has 8 mantissa bits: ``w - lr * update`` rounds back to ``w`` once the update is below half a
unit in the last place (``2**-9 * |w|``), so plain bf16-true silently drops small updates. The option
``master_weights`` of bf16-true and 16-true fixes that for any torch optimizer:

``"fp32"``
    The optimizer steps float32 copies of the 16-bit parameters (its state is float32 too); the model keeps
    16-bit weights, rewritten from the copies after each step (DeepSpeed's bf16 optimizer). +4 bytes per
    parameter for the copies, optimizer state in float32, +4 bytes of float32 gradients during the step.
``"kahan"``
    The model's weights and the optimizer state stay bfloat16 between steps (as plain bf16-true); each step runs
    in float32 on working copies (:mod:`prec.precision.working_copies`), and what rounding the new weight to
    bfloat16 drops is carried to the next step in a bfloat16 compensation buffer (itself rounded stochastically,
    so what it cannot hold is not dropped the same way every step). +2 bytes per parameter.
``"stochastic"``
    As ``"kahan"``, but the new weight is rounded stochastically (unbiased: small updates land with the right
    probability) instead of compensated. No extra persistent bytes.

In both cheap modes the optimizer state is written back to bfloat16 with stochastic rounding (rounded to
nearest, Adam's moments stall about 1 % short), drawing from the precision's own generator, which checkpoints
save. The float32 working copies exist during the step only, a bounded chunk at a time. bf16-true only: float16
has no cheap unbiased rounding of this kind, use ``"fp32"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from prec._warnings import warn
from prec.cluster.dtensor import copy_into, local_tensor
from prec.errors import ConfigurationError, PrecWarning
from prec.options import MASTER_WEIGHT_MODES, MasterWeights
from prec.precision.true import TruePrecision
from prec.precision.working_copies import WorkingCopyStepper, stochastic_round

__all__ = ["MASTER_WEIGHT_MODES", "ROUNDING_SEED", "MasterWeights", "MasterWeightsPrecision", "stochastic_round"]
#: The seed of the stochastic rounding's own generator: the same on every rank whatever each rank's torch seed,
#: so DDP replicas, which round the same values, draw the same noise and stay identical.
ROUNDING_SEED = 0x5EED


class MasterWeightsPrecision(TruePrecision):
    """16-true / bf16-true whose optimizer steps keep small updates (``master_weights``, see the module docs).

    The optimizer must be set up with :meth:`setup_optimizer` (the Trainer does; a loop of your own calls it
    after building the optimizer, or :meth:`optimizer_step` does on first use). Under ``"fp32"`` the optimizer's
    ``param_groups`` then hold the float32 copies: gradient clipping, ``on_before_optimizer_step`` and the
    optimizer all see the float32 gradients it steps on (the model's 16-bit ``.grad`` hold the same values until
    the step consumes them). Call :meth:`sync_from_model` after changing the model's weights by hand.
    ``master_weights`` is the parsed :class:`MasterWeights` (equal to its spelling).
    """

    def __init__(
        self,
        name: str,
        dtype: torch.dtype,
        *,
        master_weights: str | MasterWeights = "fp32",
        device_type: str | None = None,
        convert_inputs_from: Iterable[torch.dtype] | None = None,
        keep_float32: Iterable[type[torch.nn.Module] | str] = (),
    ) -> None:
        mode = MasterWeights.parse(master_weights, owner=name)
        if mode is None:
            raise ConfigurationError(f"{name}: master_weights=None is plain {name}; build it without the option.")
        mode.check_dtype(dtype, owner=name)
        super().__init__(
            name, dtype, device_type=device_type, convert_inputs_from=convert_inputs_from, keep_float32=keep_float32
        )
        self.master_weights: MasterWeights = mode
        self._optimizers: list[Optimizer] = []
        self._pairs: dict[int, list[tuple[Tensor, Tensor]]] = {}  # fp32: (model parameter, float32 copy)
        self._buffers: dict[int, list[tuple[Tensor, Tensor | None]]] = {}  # kahan/stochastic: (param, compensation)
        self._gathered: set[int] = set()
        self._pending: dict[str, Any] | None = None
        self._generator: torch.Generator | None = None
        self._steppers: dict[int, WorkingCopyStepper] = {}

    # -- set-up -------------------------------------------------------------------------------------------
    @override
    def setup_optimizer(self, optimizer: Optimizer) -> None:
        """Give the optimizer float32 copies (``"fp32"``) or create the compensation buffers; idempotent."""
        if id(optimizer) in self._pairs or id(optimizer) in self._buffers:
            return
        if self.master_weights.keeps_float32_copy:
            self._pairs[id(optimizer)] = _install_masters(optimizer, self.param_dtype)
            self.guard.name_copies(self._pairs[id(optimizer)])  # skip reports name the model's parameters
        else:
            kahan = self.master_weights.compensates
            entries = [
                (p, torch.zeros_like(p) if kahan else None)
                for group in optimizer.param_groups
                for p in group["params"]
                if p.dtype == self.param_dtype
            ]
            self._buffers[id(optimizer)] = entries
            if self._generator is None:
                device = next((local_tensor(p).device for p, _ in entries), torch.device("cpu"))
                self._generator = torch.Generator(device=device)
                self._generator.manual_seed(ROUNDING_SEED)
            self._steppers[id(optimizer)] = WorkingCopyStepper(optimizer, entries, self._generator)
        self._optimizers.append(optimizer)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    def sync_from_model(self) -> None:
        """Take the float32 copies from the model's current weights and clear the compensation."""
        for pairs in self._pairs.values():
            with torch.no_grad():
                for param, master in pairs:
                    master.copy_(param)
        for buffers in self._buffers.values():
            for _, compensation in buffers:
                if compensation is not None:
                    compensation.zero_()

    def effective_weight(self, param: Tensor) -> Tensor:
        """What a 16-bit parameter is worth, in float32: its float32 copy (``"fp32"``), the weight plus its
        compensation (``"kahan"``), or the weight itself (``"stochastic"``, or a parameter this precision does not
        track). Evaluate or export with these values to get the full precision training kept."""
        with torch.no_grad():
            for pairs in self._pairs.values():
                for model_param, master in pairs:
                    if model_param is param:
                        return master.detach().clone()
            for buffers in self._buffers.values():
                for model_param, compensation in buffers:
                    if model_param is param and compensation is not None:
                        return param.detach().float() + compensation.float()
            return param.detach().float()

    @override
    @contextmanager
    def checkpoint_parameters(self, module: torch.nn.Module) -> Iterator[None]:
        """Under ``"fp32"``: the float32 copies stand in for the module's parameters, so a sharded checkpoint
        names the optimizer state kept for them by the parameters' names (the copies themselves are saved with
        this precision's state)."""
        masters = {id(param): master for pairs in self._pairs.values() for param, master in pairs}
        swapped: list[tuple[torch.nn.Module, str, Tensor]] = []
        for owner in module.modules():
            for leaf, param in list(owner.named_parameters(recurse=False)):
                master = masters.get(id(param))
                if master is not None:
                    owner.register_parameter(leaf, master)  # type: ignore[arg-type]
                    swapped.append((owner, leaf, param))
        try:
            yield
        finally:
            for owner, leaf, param in swapped:
                owner.register_parameter(leaf, param)  # type: ignore[arg-type]

    # -- the step -----------------------------------------------------------------------------------------
    @override
    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Hand the optimizer the gradients it steps on (float32 copies of the model's under ``"fp32"``)."""
        if self.master_weights.keeps_float32_copy:
            self.setup_optimizer(optimizer)
            if id(optimizer) not in self._gathered:
                _gather_gradients(self._pairs[id(optimizer)])
                self._gathered.add(id(optimizer))

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None = None,
        *,
        update: bool = True,
        **kwargs: Any,
    ) -> Any:
        self.setup_optimizer(optimizer)
        if self.master_weights.keeps_float32_copy:
            return self._step_masters(optimizer, closure, update, kwargs)
        return super().optimizer_step(optimizer, closure, update=update, **kwargs)

    @override
    def apply_optimizer_step(
        self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any
    ) -> Any:
        """Under ``"kahan"`` and ``"stochastic"``: step float32 working copies and round the results back."""
        stepper = self._steppers.get(id(optimizer))
        if stepper is None:
            return super().apply_optimizer_step(optimizer, closure, **kwargs)
        return stepper.step(closure, kwargs)

    def _step_masters(
        self, optimizer: Optimizer, closure: Callable[[], Any] | None, update: bool, kwargs: dict[str, Any]
    ) -> Any:
        pairs = self._pairs[id(optimizer)]
        step_closure = None
        if closure is not None:

            def step_closure() -> Any:  # an optimizer that re-evaluates sees the weights it is stepping
                _write_back(pairs)
                for param, _ in pairs:
                    param.grad = None
                result = closure()
                _gather_gradients(pairs)
                return result
        else:
            self.unscale_gradients(optimizer)
        try:
            return super().optimizer_step(optimizer, step_closure, update=update, **kwargs)
        finally:
            self._gathered.discard(id(optimizer))
            _write_back(pairs)
            for param, master in pairs:
                param.grad = None
                master.grad = None

    # -- state --------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        """The float32 copies or compensation buffers (per optimizer, in set-up order) and the rounding RNG."""
        if not self._optimizers and self._pending is not None:
            return dict(self._pending)  # loaded before any optimizer was set up: not applied yet
        state: dict[str, Any] = {**super().state_dict(), "master_weights": self.master_weights.value}
        if self.master_weights.keeps_float32_copy:
            state["masters"] = [[m.detach() for _, m in self._pairs[id(o)]] for o in self._optimizers]
        elif self.master_weights.compensates:
            state["compensation"] = [[c for _, c in self._buffers[id(o)]] for o in self._optimizers]
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; from another mode (or none) convert what can be, with a warning."""
        if not self._optimizers:
            self._pending = dict(state_dict)  # applied when the optimizer is set up
            return
        self.guard.load_state_dict(state_dict)  # the skip counters, kept in every mode
        saved = MasterWeights.parse(state_dict.get("master_weights"), owner=f"{self.name} checkpoint")
        if saved is self.master_weights:
            self._load_same_mode(state_dict)
            return
        self.sync_from_model()
        if saved is not None and saved.keeps_float32_copy and self.master_weights.compensates:
            _masters_to_compensation(state_dict["masters"], self._buffers, self._optimizers)
            how = "the compensation is rebuilt from the float32 copies"
        elif saved is not None and saved.compensates and self.master_weights.keeps_float32_copy:
            _compensation_to_masters(state_dict["compensation"], self._pairs, self._optimizers)
            how = "the float32 copies are rebuilt from the weights plus the compensation"
        else:
            how = "it starts from the model's 16-bit weights"
        warn(
            f"{self.name}: the precision state was saved with master_weights={saved and saved.value!r}, this run"
            f" uses master_weights={self.master_weights.value!r}: {how}.",
            PrecWarning,
        )

    def _load_same_mode(self, state_dict: dict[str, Any]) -> None:
        if self._generator is not None and "generator" in state_dict:
            self._generator.set_state(state_dict["generator"])
        if not (self.master_weights.keeps_float32_copy or self.master_weights.compensates):
            return  # nothing kept beside the weights
        key = "masters" if self.master_weights.keeps_float32_copy else "compensation"
        targets = [
            [m for _, m in self._pairs[id(o)]] if key == "masters" else [c for _, c in self._buffers[id(o)]]
            for o in self._optimizers
        ]
        saved = state_dict[key]
        if [len(group) for group in saved] != [len(group) for group in targets]:
            raise ConfigurationError(f"{self.name}: the saved {key} do not fit the optimizers' parameters.")
        with torch.no_grad():
            for group, saved_group in zip(targets, saved, strict=True):
                for target, value in zip(group, saved_group, strict=True):
                    copy_into(target, value)  # type: ignore[arg-type]
            for pairs in self._pairs.values():
                _write_back(pairs)

    @override
    def teardown(self) -> None:
        self._gathered.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, master_weights={self.master_weights.value!r})"


def _install_masters(optimizer: Optimizer, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
    """Swap each ``dtype`` parameter of ``optimizer`` for a float32 copy (moving any state it already has)."""
    pairs: list[tuple[Tensor, Tensor]] = []
    for group in optimizer.param_groups:
        params = group["params"]
        for index, param in enumerate(params):
            if param.dtype != dtype:
                continue
            master = torch.nn.Parameter(param.detach().float(), requires_grad=param.requires_grad)
            if param in optimizer.state:
                state = optimizer.state.pop(param)
                optimizer.state[master] = {
                    k: v.float() if isinstance(v, Tensor) and v.is_floating_point() and v.dim() else v
                    for k, v in state.items()
                }
            params[index] = master
            pairs.append((param, master))
    return pairs


def _gather_gradients(pairs: list[tuple[Tensor, Tensor]]) -> None:
    for param, master in pairs:
        master.grad = None if param.grad is None else param.grad.float()


def _write_back(pairs: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for param, master in pairs:
            param.copy_(master)


def _masters_to_compensation(
    masters: list[list[Tensor]], buffers: dict[int, list[tuple[Tensor, Tensor | None]]], optimizers: list[Optimizer]
) -> None:
    with torch.no_grad():
        for optimizer, group in zip(optimizers, masters, strict=False):
            for (param, compensation), master in zip(buffers[id(optimizer)], group, strict=False):
                exact = torch.empty_like(param, dtype=torch.float32)
                copy_into(exact, master)
                param.copy_(exact)
                if compensation is not None:
                    compensation.copy_(exact - param.float())


def _compensation_to_masters(
    compensation: list[list[Tensor]], pairs: dict[int, list[tuple[Tensor, Tensor]]], optimizers: list[Optimizer]
) -> None:
    with torch.no_grad():
        for optimizer, group in zip(optimizers, compensation, strict=False):
            for (param, master), comp in zip(pairs[id(optimizer)], group, strict=False):
                residual = torch.empty_like(param)
                copy_into(residual, comp)
                master.copy_(param.float() + residual.float())
