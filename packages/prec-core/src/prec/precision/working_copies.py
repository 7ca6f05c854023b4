"""Stepping an unmodified torch optimizer on float32 working copies of bfloat16 parameters.

bf16-true's cheap ``master_weights`` modes keep bfloat16 weights and bfloat16 optimizer state between steps, but
the arithmetic of a step must be float32: a bfloat16 weight drops any update below half a unit in its last place,
and bfloat16 moments rounded to nearest stall (Adam's first moment settles about 1 % short of its target, which
costs 1 % of every update). So for each step the optimizer is handed float32 copies of the parameters, their
gradients and their state; afterwards the weights are written back with Kahan compensation or stochastic rounding
and the state with stochastic rounding, which is unbiased, so no moment stalls.

The copies exist only during the step, in chunks of at most :data:`CHUNK_ELEMENTS` parameter elements, so the
transient memory is bounded however large the model: the optimizer's ``step`` runs once per chunk, on the
parameters of that chunk only (the others' gradients are set aside meanwhile, which every torch optimizer reads as
"no update").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from prec.cluster.dtensor import local_tensor

__all__ = ["CHUNK_ELEMENTS", "WorkingCopyStepper", "round_into", "stochastic_round"]

#: The most parameter elements given float32 working copies at once (64 MiB of float32 per copied tensor kind).
CHUNK_ELEMENTS = 1 << 24


def stochastic_round(values: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``values`` to bfloat16 stochastically: up with probability equal to the dropped fraction."""
    return _round_with_noise(values, _noise(values, generator))


def round_into(pairs: list[tuple[Tensor, Tensor]], generator: torch.Generator | None = None) -> None:
    """Round each float32 source stochastically into its bfloat16 destination (``(source, destination)`` on one
    device): the noise is drawn per source, in order, and the rounding is one pass over all of them."""
    if not pairs:
        return
    sources = [source.reshape(-1) for source, _ in pairs]
    noise = torch.cat([_noise(source, generator) for source in sources])
    rounded = _round_with_noise(torch.cat(sources), noise)
    for (_, destination), piece in zip(pairs, rounded.split([source.numel() for source in sources]), strict=True):
        destination.copy_(piece.view(destination.shape))


def _noise(values: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)


def _round_with_noise(values: Tensor, noise: Tensor) -> Tensor:
    rounded = ((values.view(torch.int32) + noise) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000 as int32
    return torch.where(torch.isfinite(values), rounded, values).to(torch.bfloat16)


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

    def step(self, closure: Callable[[], Any] | None, kwargs: dict[str, Any]) -> Any:
        """One optimizer step; a ``closure`` (re-evaluating the model) needs every copy at once: one chunk."""
        with_grad = [p for p, _ in self.entries if p.grad is not None or closure is not None]
        chunks = [with_grad] if closure is not None else _chunks(with_grad, self.chunk_elements)
        result = None
        for index, chunk in enumerate(chunks or [[]]):
            result = self._step_chunk(chunk, closure, kwargs, step_others=index == 0)
        return result

    def _step_chunk(
        self, chunk: list[Tensor], closure: Callable[[], Any] | None, kwargs: dict[str, Any], *, step_others: bool
    ) -> Any:
        members = {id(p) for p in chunk}
        copies: list[tuple[Tensor, Tensor]] = []
        upcast_keys: dict[int, set[str]] = {}
        with self._aside(members, step_others):
            try:
                for group in self.optimizer.param_groups:
                    params = group["params"]
                    for index, param in enumerate(params):
                        if id(param) in members:
                            copy = self._copy_in(param, upcast_keys)
                            params[index] = copy
                            copies.append((param, copy))
                step_closure = None if closure is None else self._closure(closure, copies)
                if step_closure is not None:
                    return self.optimizer.step(step_closure, **kwargs)
                return self.optimizer.step(**kwargs)
            finally:
                self._copy_out(copies, upcast_keys)

    def _copy_in(self, param: Tensor, upcast_keys: dict[int, set[str]]) -> Tensor:
        """A float32 parameter (and float32 gradient and state) standing in for ``param`` during the step."""
        with torch.no_grad():
            value = param.detach().float()
            compensation = self._compensation.get(id(param))
            if compensation is not None:
                value += compensation.float()
        copy = torch.nn.Parameter(value, requires_grad=param.requires_grad)
        copy.grad = None if param.grad is None else param.grad.float()
        state = self.optimizer.state.pop(param, None)
        if state:
            keys = {k for k, v in state.items() if _is_elementwise(v, param) and v.dtype == param.dtype}
            upcast_keys[id(copy)] = keys
            self.optimizer.state[copy] = {k: v.float() if k in keys else v for k, v in state.items()}
        return copy

    def _copy_out(self, copies: list[tuple[Tensor, Tensor]], upcast_keys: dict[int, set[str]]) -> None:
        """Put the parameters back, write the new weights into them and round the state back to 16 bits."""
        with torch.no_grad():
            back = {id(copy): param for param, copy in copies}
            for group in self.optimizer.param_groups:
                params = group["params"]
                for index, param in enumerate(params):
                    if id(param) in back:
                        params[index] = back[id(param)]
            to_round: list[tuple[Tensor, Tensor]] = []  # (float32 source, bfloat16 destination), local tensors
            for param, copy in copies:
                self._write_weight(param, copy.detach(), to_round)
                state = self.optimizer.state.pop(copy, None)
                if state is None:
                    continue
                keys = upcast_keys.get(id(copy))
                self.optimizer.state[param] = {
                    k: self._state_destination(v, to_round) if _is_new_or_upcast(k, v, keys, copy) else v
                    for k, v in state.items()
                }
            round_into(to_round, self.generator)

    def _write_weight(self, param: Tensor, exact: Tensor, to_round: list[tuple[Tensor, Tensor]]) -> None:
        compensation = self._compensation.get(id(param))
        if compensation is not None:
            param.copy_(exact)
            residual = exact - param.float()  # below half a unit in the weight's last place
            to_round.append((local_tensor(residual), local_tensor(compensation)))
        else:
            to_round.append((local_tensor(exact), local_tensor(param)))

    @staticmethod
    def _state_destination(value: Tensor, to_round: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The bfloat16 tensor that will hold ``value`` (a DTensor with its layout under FSDP2), queued for rounding."""
        result = torch.empty_like(value, dtype=torch.bfloat16)
        to_round.append((local_tensor(value), local_tensor(result)))
        return result

    def _closure(self, closure: Callable[[], Any], copies: list[tuple[Tensor, Tensor]]) -> Callable[[], Any]:
        """The user's closure, evaluated on the weights being stepped and feeding their gradients to the copies."""

        def step_closure() -> Any:
            with torch.no_grad():
                for param, copy in copies:
                    param.copy_(copy)
                    param.grad = None
            result = closure()
            for param, copy in copies:
                copy.grad = None if param.grad is None else param.grad.float()
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


def _is_elementwise(value: Any, param: Tensor) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.shape == param.shape and value.dim() > 0


def _is_new_or_upcast(key: str, value: Any, upcast: set[str] | None, copy: Tensor) -> bool:
    """State to round back to bfloat16: what was bfloat16 before the step, or what the step created in float32."""
    if not _is_elementwise(value, copy) or value.dtype != torch.float32:
        return False
    return upcast is None or key in upcast
