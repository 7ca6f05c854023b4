"""The non-finite guard: no optimizer step ever applies an inf/NaN gradient, at any precision.

Every :class:`~prec.Precision` owns one :class:`NonFiniteGuard`. Before each optimizer step it checks the gradients
of that optimizer's parameters with one fused kernel (``torch._amp_foreach_non_finite_check_and_unscale_`` with a
scale of 1, the kernel torch's GradScaler uses) and, under the default policy, skips the step, counts it and warns
(the first skip at every precision, a grad scaler's included), saying what caused it
(:mod:`prec.precision.diagnosis`: poisoned weights or optimizer state, a NaN loss, an overflow).
A run of consecutive skipped steps is an alarm: a warning after ``warn_after`` and :class:`~prec.errors.NonFiniteError`
after ``raise_after`` (a run that only skips is a run that no longer trains).

Per step the bound step (:meth:`NonFiniteGuard.bind_step`; the Trainer binds once per epoch, a loop of your own
calling ``precision.optimizer_step(optimizer)`` gets it cached on the optimizer) does O(1) work in Python: the
gradient list is built in C (``map``), one fused check kernel runs, and on the CPU the flag is read through a numpy
view of it, without a torch call.

Where the decision is made:

* an optimizer that takes torch's device-side ``found_inf`` protocol (``fused=True`` Adam, AdamW, SGD …) skips on
  the device; off the CPU its flag is read lazily, every ``warn_after`` steps, so the guard adds no host-device
  synchronisation per step;
* any other optimizer needs the flag on the host before it steps: free on the CPU (there is no device to wait
  for), one synchronisation per optimizer step elsewhere, as torch's GradScaler needs with such an optimizer (said
  once with a :class:`~prec.errors.PerformanceWarning`).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec._warnings import warn
from prec.errors import ConfigurationError, NonFiniteError, PerformanceWarning, PrecWarning
from prec.precision.diagnosis import diagnose, listed
from prec.precision.nonfinite_check import check_for, host_view, same_device, takes_found_inf

#: What the guard does about a non-finite gradient.
NONFINITE_MODES = ("skip", "raise", "off")
_GRAD = operator.attrgetter("grad")
#: Where :meth:`NonFiniteGuard.cached_step` keeps an optimizer's bound step: ``(guard, param_groups, their number,
#: step)`` in the optimizer's ``__dict__``.
BOUND_STEP = "_prec_bound_step"


@dataclass(frozen=True)
class NonFinitePolicy:
    """How a run treats inf/NaN gradients (``Trainer(nonfinite=...)``).

    Args:
        mode: ``"skip"`` (default): skip that optimizer step, count it in ``skipped_steps`` and warn once;
            ``"raise"``: raise :class:`~prec.errors.NonFiniteError` before the step; ``"off"``: no check (a grad
            scaler still skips its overflow steps, which is how loss scaling works).
        warn_after: consecutive skipped steps after which a warning names the step, the loss scale and the
            parameters whose gradients were non-finite.
        raise_after: consecutive skipped steps after which the run stops with :class:`~prec.errors.NonFiniteError`
            (``None``: never).
    """

    mode: str = "skip"
    warn_after: int = 10
    raise_after: int | None = 100

    def __post_init__(self) -> None:
        if self.mode not in NONFINITE_MODES:
            raise ConfigurationError(f"nonfinite={self.mode!r} must be one of {', '.join(map(repr, NONFINITE_MODES))}.")
        if not _positive_int(self.warn_after):
            raise ConfigurationError(f"NonFinitePolicy(warn_after={self.warn_after!r}) must be an int >= 1.")
        if self.raise_after is not None and (not _positive_int(self.raise_after) or self.raise_after < self.warn_after):
            raise ConfigurationError(
                f"NonFinitePolicy(raise_after={self.raise_after!r}) must be None or an int >= warn_after"
                f" ({self.warn_after})."
            )

    @classmethod
    def coerce(cls, value: NonFinitePolicy | str) -> NonFinitePolicy:
        """A policy from ``Trainer(nonfinite=...)``: a mode name or a policy."""
        if isinstance(value, NonFinitePolicy):
            return value
        if isinstance(value, str):
            return cls(mode=value)
        raise ConfigurationError(
            f"nonfinite={value!r} must be one of {', '.join(map(repr, NONFINITE_MODES))} or a prec.NonFinitePolicy."
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class NonFiniteGuard:
    """Checks gradients before a step, counts skipped steps and raises the alarm; one per Precision."""

    def __init__(self, policy: NonFinitePolicy | None = None) -> None:
        #: Whether the guard checks anything (the policy's mode is not ``"off"``): a plain attribute, kept by the
        #: ``policy`` setter, because every optimizer step reads it.
        self.active = True
        self.policy = policy or NonFinitePolicy()
        self.parameter_names: dict[int, str] = {}
        #: Where messages read the current optimizer step from (the Trainer sets it; ``None`` in your own loop).
        self.step_source: Callable[[], int] | None = None
        #: The last loss before loss scaling (set by a grad-scaling precision): a skip report says whether it was
        #: already NaN (the data) or the scaled backward overflowed.
        self.last_loss: Tensor | None = None
        self.skipped = 0  # steps skipped and read back on the host
        self.consecutive = 0  # consecutive skipped steps, as last read
        self._pending: Tensor | None = None  # device-side skips not read yet (lazy devices)
        self._run: Tensor | None = None  # device-side consecutive skips not read yet
        self._steps_since_read = 0
        self._warned_skip = False
        self._warned_sync = False
        self._alarmed = False  # this run of skips was warned about
        self._last_skipped = False  # the precision's step_skipped may be set: the next good step clears it
        self._flags: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._copies: dict[int, Tensor] = {}  # id(copy the optimizer steps) -> the model parameter it stands for

    @property
    def policy(self) -> NonFinitePolicy:
        """What the guard does about a non-finite gradient."""
        return self._policy

    @policy.setter
    def policy(self, policy: NonFinitePolicy) -> None:
        self._policy = policy
        self.active = policy.mode != "off"

    def watch(self, module: torch.nn.Module) -> None:
        """Remember parameter names, so a detection can say which gradients were non-finite."""
        self.parameter_names = {id(param): name for name, param in module.named_parameters()}

    def name_copies(self, pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
        """``(model parameter, copy)`` pairs: the optimizer steps the copies (float32 master weights), reports
        name them by their parameter."""
        for param, copy in pairs:
            self._copies[id(copy)] = param

    def name_of(self, param: Tensor, fallback: str) -> str:
        """The model's name for ``param`` (or for the parameter it is a copy of), else ``fallback``."""
        name = self.parameter_names.get(id(param))
        if name is None and id(param) in self._copies:
            name = self.parameter_names.get(id(self._copies[id(param)]))
        return name if name is not None else fallback

    # -- checking ---------------------------------------------------------------------------------------------
    def found_nonfinite(self, optimizer: Optimizer) -> bool | Tensor:
        """Whether ``optimizer``'s gradients hold inf/NaN: a bool, or a device flag for a fused optimizer to take."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return False
        device = grads[0].device
        found, one = self._device_flags(device)
        if not takes_found_inf(optimizer):
            check_for(device)(same_device(grads, device), found, one)
            if device.type != "cpu":
                self._warn_sync(device, optimizer)
            if not found.item():
                self.consecutive = 0
                self._alarmed = False
                self._last_skipped = False
                return False
            found.zero_()
            self._last_skipped = True
            return True
        # Handed to the optimizer, which keeps a reference until it steps; float32 whatever the default dtype.
        found = torch.zeros((), device=device, dtype=torch.float32)
        check_for(device)(grads, found, one)
        self._last_skipped = True
        return found

    def cached_step(self, optimizer: Optimizer, bind: Callable[[Optimizer], Callable[[], Any]]) -> Callable[[], Any]:
        """The bound step of ``optimizer`` (``bind(optimizer)``), kept on the optimizer itself (under
        :data:`BOUND_STEP`, which ``Optimizer.state_dict`` and pickling leave out): it lives and dies with the
        optimizer, and holds it only weakly. Reused while the entry is this guard's and ``param_groups`` is the
        same list with the same number of groups (``add_param_group`` and ``load_state_dict`` bind anew)."""
        groups = optimizer.param_groups
        entry = optimizer.__dict__.get(BOUND_STEP)
        if entry is not None and entry[0] is self and entry[1] is groups and entry[2] == len(groups):
            return entry[3]  # type: ignore[no-any-return]
        step = bind(optimizer)
        optimizer.__dict__[BOUND_STEP] = (self, groups, len(groups), step)
        return step

    def bind_step(
        self,
        optimizer: Optimizer,
        precision: Any,
        apply: Callable[[Optimizer], Any] | None = None,
        unbound: Callable[[Optimizer], Any] | None = None,
    ) -> Callable[[], Any]:
        """A zero-argument guarded step for loops that step the same optimizer many times: everything
        per-parameter is prepared once here, so a step costs the gradient list (built in C), the check kernel and
        one flag read (free on the CPU). ``apply(optimizer)`` runs a step that goes ahead (default:
        ``optimizer.step()``); ``unbound(optimizer)`` steps an optimizer this cannot bind (fused: it skips on the
        device; parameters on several devices), by default ``precision.optimizer_step(optimizer)``. The step holds
        the optimizer through a weak reference only, so it may be cached on the optimizer itself. Rebind after
        changing ``optimizer.param_groups`` (the Trainer binds once per epoch). ``precision.step_skipped`` is kept
        up to date."""
        precision.step_skipped = False
        self._last_skipped = False
        if not self.active:  # never cached on the optimizer (only a guarded step is): a plain reference is fine
            return optimizer.step if apply is None else partial(apply, optimizer)
        ref = weakref.ref(optimizer)
        params = [param for group in optimizer.param_groups for param in group["params"]]
        devices = {param.device for param in params}
        if len(devices) != 1 or takes_found_inf(optimizer):
            fallback = unbound if unbound is not None else precision.optimizer_step
            return lambda: fallback(ref())
        (device,) = devices
        if device.type != "cpu":
            self._warn_sync(device, optimizer)
        found, one = self._device_flags(device)
        check = check_for(device)
        flag = host_view(found)

        def skip(target: Optimizer) -> None:
            found.zero_()
            self._last_skipped = True
            precision.step_skipped = True
            self.record(target, True, _no_scale)

        def guarded_step() -> Any:
            grads = [*map(_GRAD, params)]
            try:
                check(grads, found, one)
            except TypeError:  # a parameter without a gradient (frozen, or unused this step)
                check([grad for grad in grads if grad is not None], found, one)
            if flag[()] if flag is not None else found.item():
                return skip(ref())
            if self._last_skipped:
                self._last_skipped = False
                precision.step_skipped = False
                self.consecutive = 0
                self._alarmed = False
            return ref().step() if apply is None else apply(ref())

        return guarded_step

    def _device_flags(self, device: torch.device) -> tuple[Tensor, Tensor]:
        flags = self._flags.get(device)
        if flags is None:  # float32 whatever the default dtype (64-true, bf16-true set it around the steps)
            flags = self._flags[device] = (
                torch.zeros((), device=device, dtype=torch.float32),
                torch.ones((), device=device, dtype=torch.float32),
            )
        return flags

    def _warn_sync(self, device: torch.device, optimizer: Optimizer) -> None:
        if not self._warned_sync:
            self._warned_sync = True
            warn(
                f"the non-finite guard reads one flag per step from {device} for {type(optimizer).__name__}, which"
                " cannot skip a step on the device: one host-device synchronisation per step, as torch's GradScaler"
                " needs. Pass fused=True to the optimizer (Adam, AdamW, SGD) to skip on the device, or"
                " Trainer(nonfinite='off').",
                PerformanceWarning,
            )

    # -- after a step -------------------------------------------------------------------------------------------
    def record(
        self, optimizer: Optimizer, skipped: bool | Tensor, scale: Callable[[], Any], *, loss_scaling: bool = False
    ) -> None:
        """Count a step's outcome and raise the alarm on a long run of skips. ``skipped`` may live on the device
        (fused optimizers, grad scalers that did not sync): then it is read every ``warn_after`` steps.
        ``loss_scaling``: the skip came from a grad scaler, whose overflow steps are how dynamic loss scaling
        works: the first skip still warns (saying whether it was an overflow or a NaN), the rest count."""
        read_now = not isinstance(skipped, Tensor)
        if isinstance(skipped, Tensor):
            flag = skipped.gt(0).to(torch.int64).reshape(())
            run = self._run if self._run is not None else self.consecutive
            self._run = (run + flag) * flag  # consecutive skips, reset by a good step, kept on the device
            self._pending = flag if self._pending is None else self._pending + flag.to(self._pending.device)
            self._steps_since_read += 1
            if flag.device.type != "cpu" and self._steps_since_read < self.policy.warn_after:
                return
            read_now = flag.device.type == "cpu"  # the flag is this step's: its gradients are still there
            self.consecutive = int(self._run.item())
            self._run = None
            self._settle()
            skipped = self.consecutive > 0
        elif skipped:
            self.skipped += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        if not skipped:
            self._alarmed = False
            return
        if self.policy.mode == "raise" and not loss_scaling:
            raise NonFiniteError(self._describe(optimizer, scale, "found non-finite gradients", read_now))
        if not self._warned_skip:
            self._warned_skip = True
            what = "skipped an optimizer step with non-finite gradients"
            note = " Further skips are counted in the 'skipped_steps' metric."
            if loss_scaling:
                what = "skipped an optimizer step under loss scaling"
                note = (
                    " Further skips (overflows are how dynamic loss scaling finds its scale) are counted in the"
                    " 'skipped_steps' metric."
                )
            warn(self._describe(optimizer, scale, what, read_now) + note, PrecWarning)
        self._alarm(optimizer, scale)

    def _settle(self) -> None:
        if self._pending is not None:
            self.skipped += int(self._pending.item())
            self._pending = None
        self._steps_since_read = 0

    def _alarm(self, optimizer: Optimizer, scale: Callable[[], Any]) -> None:
        policy = self.policy
        if policy.raise_after is not None and self.consecutive >= policy.raise_after:
            raise NonFiniteError(
                self._describe(optimizer, scale, f"{self.consecutive} consecutive optimizer steps were skipped")
                + " The run no longer trains: lower the learning rate, check the data for inf/NaN, or use"
                " bf16-mixed/32-true."
            )
        if self.consecutive >= policy.warn_after and not self._alarmed:
            self._alarmed = True
            warn(
                self._describe(optimizer, scale, f"{self.consecutive} consecutive optimizer steps were skipped")
                + (f" The run stops after {policy.raise_after}." if policy.raise_after is not None else ""),
                PrecWarning,
            )

    def _describe(self, optimizer: Optimizer, scale: Callable[[], Any], what: str, diagnosed: bool = True) -> str:
        step = self.step_source() if self.step_source is not None else None
        where = f"at optimizer step {step}" if step is not None else "at an optimizer step"
        current = scale()
        scale_text = f", loss scale {current}" if current is not None else ""
        names = self.nonfinite_parameters(optimizer)
        named = listed(names) or "no parameter (already zeroed)"
        text = f"prec {what} {where}{scale_text}; non-finite gradients in: {named}."
        if diagnosed:
            cause = diagnose(optimizer, self._namer(optimizer), self.last_loss)
            text += f" {cause}" if cause else ""
        return text

    def _namer(self, optimizer: Optimizer) -> Callable[[Tensor], str]:
        where = {
            id(param): f"param_groups[{group_index}][{index}]"
            for group_index, group in enumerate(optimizer.param_groups)
            for index, param in enumerate(group["params"])
        }
        return lambda param: self.name_of(param, where.get(id(param), "an unnamed tensor"))

    def nonfinite_parameters(self, optimizer: Optimizer) -> list[str]:
        """Names of ``optimizer``'s parameters whose gradients hold inf/NaN (reads every gradient: detection only)."""
        names = []
        for group_index, group in enumerate(optimizer.param_groups):
            for index, param in enumerate(group["params"]):
                if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                    names.append(self.name_of(param, f"param_groups[{group_index}][{index}]"))
        return names

    # -- state --------------------------------------------------------------------------------------------------
    def skipped_steps(self) -> int:
        self._settle()
        return self.skipped

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps(), "consecutive_skips": self.consecutive}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = self._run = None
        self.skipped = int(state.get("skipped_steps", 0))
        self.consecutive = int(state.get("consecutive_skips", 0))


def _no_scale() -> None:
    return None
