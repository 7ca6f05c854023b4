"""Stepping an unmodified torch optimizer on float32 working copies of bfloat16 parameters.

bf16-true's cheap ``master_weights`` modes keep bfloat16 weights and bfloat16 optimizer state between steps, but
the arithmetic of a step must be float32: a bfloat16 weight drops any update below half a unit in its last place,
and bfloat16 moments rounded to nearest stall (Adam's first moment settles about 1 % short of its target, which
costs 1 % of every update). So for each step the optimizer is handed float32 copies of the parameters, their
gradients and their state; afterwards the weights are written back with Kahan compensation or stochastic rounding
and the state with stochastic rounding, which is unbiased, so no moment stalls.

The copies of a chunk's weights and state live in one float32 buffer, laid out as :mod:`prec.precision.rounding`
packs what it rounds: filled by one foreach copy, stepped in place by the optimizer, rounded in place in one pass
and copied back by one foreach copy; the per-tensor work left is bookkeeping. State the optimizer does not keep
elementwise in bfloat16 (8-bit or 4-bit quantized state, integer state) is left in its own format: the optimizer
reads and writes it as it always does, only the weights it steps are float32.

The copies exist only during the step, in chunks of at most :data:`CHUNK_ELEMENTS` parameter elements, so the
transient memory is bounded however large the model: the optimizer's ``step`` runs once per chunk, on the
parameters of that chunk only (the others' gradients are set aside meanwhile, which every torch optimizer reads as
"no update").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.cluster.dtensor import local_tensor
from prec.precision.rounding import NoiseStream, padded, round_into, round_packed, stochastic_round, write_rounded

__all__ = ["CHUNK_ELEMENTS", "WorkingCopyStepper", "round_into", "stochastic_round"]

#: The most parameter elements given float32 working copies at once (64 MiB of float32 per copied tensor kind).
CHUNK_ELEMENTS = 1 << 24


@dataclass
class _Copy:
    """A parameter and its float32 stand-in; the state keys upcast for the step (the bfloat16 tensors that held
    them, and their float32 copies); where the stand-in and those copies sit in the chunk's buffer (if any)."""

    param: Tensor
    copy: Tensor
    had_state: bool
    upcast: dict[str, Tensor] = field(default_factory=dict)
    views: dict[str, Tensor] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=list)


class WorkingCopyStepper:
    """Steps ``optimizer`` on float32 working copies of its bfloat16 ``entries`` (parameter, compensation or None).

    With a compensation buffer the new weight is ``round_to_nearest(exact)`` and the buffer keeps
    ``exact - weight`` for the next step (Kahan), itself rounded stochastically so that the residual bfloat16
    cannot hold is not dropped the same way every step; without one the weight is rounded stochastically. Parameters of
    other dtypes (float32 modules kept by ``keep_float32``) are stepped as they are, once per step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        entries: list[tuple[Tensor, Tensor | None]],
        generator: torch.Generator,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        self.optimizer = optimizer
        self.entries = entries
        self.generator = generator
        self.chunk_elements = chunk_elements
        self._compensation = {id(param): compensation for param, compensation in entries}
        #: One buffer per chunk for plain tensors; a DTensor (FSDP2) keeps its layout, copied tensor by tensor.
        self.packed = True
        self._noise = NoiseStream(generator)

    def step(self, closure: Callable[[], Any] | None, kwargs: dict[str, Any]) -> Any:
        """One optimizer step; a ``closure`` (re-evaluating the model) needs every copy at once: one chunk."""
        with_grad = [p for p, _ in self.entries if p.grad is not None or closure is not None]
        chunks = [with_grad] if closure is not None else _chunks(with_grad, self.chunk_elements)
        result = None
        self._noise = NoiseStream(self.generator)  # one sequence per step, whatever the chunks
        for index, chunk in enumerate(chunks or [[]]):
            result = self._step_chunk(chunk, closure, kwargs, step_others=index == 0)
        return result

    def _step_chunk(
        self, chunk: list[Tensor], closure: Callable[[], Any] | None, kwargs: dict[str, Any], *, step_others: bool
    ) -> Any:
        members = {id(p) for p in chunk}
        ordered = [p for group in self.optimizer.param_groups for p in group["params"] if id(p) in members]
        copies: list[_Copy] = []
        buffer: Tensor | None = None
        with self._aside(members, step_others):
            try:
                with torch.no_grad():
                    buffer, copies = self._copy_in(ordered)
                swap = {id(c.param): c.copy for c in copies}
                for group in self.optimizer.param_groups:
                    group["params"][:] = [swap.get(id(p), p) for p in group["params"]]
                step_closure = None if closure is None else self._closure(closure, copies)
                if step_closure is not None:
                    return self.optimizer.step(step_closure, **kwargs)
                return self.optimizer.step(**kwargs)
            finally:
                back = {id(c.copy): c.param for c in copies}
                for group in self.optimizer.param_groups:
                    group["params"][:] = [back.get(id(p), p) for p in group["params"]]
                with torch.no_grad():
                    self._copy_out(buffer, copies)

    # -- copy in --------------------------------------------------------------------------------------------
    def _copy_in(self, params: list[Tensor]) -> tuple[Tensor | None, list[_Copy]]:
        """Float32 stand-ins for ``params`` (and float32 gradients and state): views of one buffer when plain."""
        copies = []
        for param in params:
            state = self.optimizer.state.get(param) or {}
            upcast = {k: v for k, v in state.items() if _is_elementwise(v, param) and v.dtype == param.dtype}
            copies.append(_Copy(param, param, bool(state), upcast))
        if not (self.packed and all(type(p) in (Tensor, torch.nn.Parameter) for p in params)):
            for item in copies:
                item.copy = self._copy_of(item)
            self._move_state(copies)
            return None, copies
        total = 0
        for item in copies:
            for size in [item.param.numel()] * (1 + len(item.upcast)):
                item.offsets.append(total)
                total += padded(size)
        buffer = torch.empty(total, dtype=torch.float32, device=params[0].device if params else None)
        targets, sources = [], []
        for item in copies:
            views = [buffer[o : o + item.param.numel()].view(item.param.shape) for o in item.offsets]
            item.copy = views[0]
            targets += views
            sources += [item.param.detach(), *item.upcast.values()]
            item.views = dict(zip(item.upcast, views[1:], strict=True))
        if targets:
            torch._foreach_copy_(targets, sources)
        kahan = [(c.copy, comp) for c in copies if (comp := self._compensation.get(id(c.param))) is not None]
        if kahan:
            torch._foreach_add_([c for c, _ in kahan], [comp for _, comp in kahan])
        grads = [c for c in copies if c.param.grad is not None]
        if grads:
            flat = torch.empty(sum(c.param.numel() for c in grads), dtype=torch.float32, device=buffer.device)
            pieces = flat.split([c.param.numel() for c in grads])
            views = [g.view(c.param.shape) for g, c in zip(pieces, grads, strict=True)]
            torch._foreach_copy_(views, [c.param.grad for c in grads])  # type: ignore[misc]
            for view, item in zip(views, grads, strict=True):
                item.copy.grad = view
        self._move_state(copies)
        return buffer, copies

    def _copy_of(self, item: _Copy) -> Tensor:
        """A float32 stand-in of its own (a DTensor keeps its layout), with a float32 gradient."""
        param = item.param
        value = param.detach().float()
        compensation = self._compensation.get(id(param))
        if compensation is not None:
            value += compensation.float()
        copy = torch.nn.Parameter(value, requires_grad=param.requires_grad)
        copy.grad = None if param.grad is None else param.grad.float()
        item.views = {k: v.float() for k, v in item.upcast.items()}
        return copy

    def _move_state(self, copies: list[_Copy]) -> None:
        for item in copies:
            state = self.optimizer.state.pop(item.param, None)
            if state:
                self.optimizer.state[item.copy] = {k: item.views.get(k, v) for k, v in state.items()}

    # -- copy out -------------------------------------------------------------------------------------------
    def _copy_out(self, buffer: Tensor | None, copies: list[_Copy]) -> None:
        """Write the new weights into the parameters and round the state back to bfloat16, in one pass."""
        kahan = [c for c in copies if self._compensation.get(id(c.param)) is not None]
        if kahan and buffer is not None:
            params, exacts = [c.param for c in kahan], [c.copy.detach() for c in kahan]
            torch._foreach_copy_(params, exacts)  # round to nearest
            torch._foreach_sub_(exacts, params)  # what it dropped, in place: the residual to keep
        else:
            for item in kahan:
                item.param.copy_(item.copy.detach())
                item.copy.sub_(item.param)
        pairs: list[tuple[Tensor, Tensor]] = []  # (float32 source, bfloat16 destination), local tensors
        intact = buffer is not None
        for item in copies:
            compensation = self._compensation.get(id(item.param))
            destination = compensation if compensation is not None else item.param
            pairs.append((local_tensor(item.copy.detach()), local_tensor(destination)))
            state = self.optimizer.state.pop(item.copy, None)
            if state is None:
                intact = intact and not item.upcast
                continue
            rounded: dict[str, Tensor] = {}
            for key, value in state.items():
                if not _is_rounded(value, item.copy) or (item.had_state and key not in item.upcast):
                    continue  # not bfloat16 before the step, nor created by it in float32
                intact = intact and item.views.get(key) is value
                target = item.upcast.get(key)
                rounded[key] = torch.empty_like(value, dtype=torch.bfloat16) if target is None else target
                pairs.append((local_tensor(value), local_tensor(rounded[key])))
            intact = intact and len(rounded) == len(item.upcast)
            self.optimizer.state[item.param] = {k: rounded.get(k, v) for k, v in state.items()}
        if intact and buffer is not None and pairs and all(_in_place(c, buffer) for c in copies):
            offsets = [o for c in copies for o in c.offsets]
            write_rounded(round_packed(buffer, self._noise), offsets, [d for _, d in pairs])
        else:
            round_into(pairs, self._noise)  # packed the same way: the same noise for the same values

    def _closure(self, closure: Callable[[], Any], copies: list[_Copy]) -> Callable[[], Any]:
        """The user's closure, evaluated on the weights being stepped and feeding their gradients to the copies."""

        def step_closure() -> Any:
            with torch.no_grad():
                for item in copies:
                    item.param.copy_(item.copy)
                    item.param.grad = None
            result = closure()
            for item in copies:
                item.copy.grad = None if item.param.grad is None else item.param.grad.float()
            return result

        return step_closure

    @contextmanager
    def _aside(self, members: set[int], step_others: bool) -> Iterator[None]:
        """Set aside the gradients of the parameters this chunk does not step, and give them back afterwards."""
        aside: list[tuple[Tensor, Tensor]] = []
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if id(param) in members or param.grad is None:
                    continue
                if step_others and id(param) not in self._compensation:
                    continue  # a float32 parameter: stepped once, with the first chunk
                aside.append((param, param.grad))
                param.grad = None
        try:
            yield
        finally:
            for param, grad in aside:
                param.grad = grad


def _chunks(params: list[Tensor], limit: int) -> list[list[Tensor]]:
    chunks: list[list[Tensor]] = []
    size = limit
    for param in params:
        if size + param.numel() > limit and (not chunks or chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(param)
        size += param.numel()
    return chunks


def _is_plain(value: Any) -> bool:
    """A tensor whose values are its elements (a DTensor's shard included), not a quantized or other subclass."""
    return isinstance(value, Tensor) and type(local_tensor(value)) in (Tensor, torch.nn.Parameter)


def _is_elementwise(value: Any, param: Tensor) -> bool:
    return _is_plain(value) and value.is_floating_point() and value.shape == param.shape and value.dim() > 0


def _is_rounded(value: Any, copy: Tensor) -> bool:
    return _is_elementwise(value, copy) and value.dtype == torch.float32


def _in_place(item: _Copy, buffer: Tensor) -> bool:
    """Whether the optimizer stepped the weight where it was given (in the buffer), not into new storage."""
    return item.copy.data_ptr() == buffer.data_ptr() + item.offsets[0] * buffer.element_size()
