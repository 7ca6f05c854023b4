"""Stochastic rounding of float32 to bfloat16: many tensors in one pass over one buffer, from one random draw.

A float32 value is a bfloat16 value plus 16 more mantissa bits. Adding 16 uniform random bits to the float32
bits and keeping the upper half rounds up with probability equal to the dropped fraction: unbiased, and exact
(the float32 value has no bits below those 16). Done as integer arithmetic on the float32 buffer itself, the
upper halves of its words are the bfloat16 results, read in place: no float conversion, no copy of the values.

The random bits cost most of the time, so they are drawn 64 at a time: one 64-bit draw gives the noise of
:data:`ALIGN` elements. On a CPU they come from numpy's PCG64 (several times faster than torch's CPU generator,
which draws one element at a time), seeded by one draw from the caller's torch generator: that generator stays
the one state to seed, save and restore. A :class:`NoiseStream` hands out one seeded sequence in order, and
tensors are packed at offsets that are multiples of :data:`ALIGN`, so the noise an element gets depends only on
its place in the sequence of tensors rounded, not on how the sequence was cut into calls (chunked steps equal
one step). On other devices the draws come from the torch generator on the device.

Infinities stay infinite and a NaN stays NaN, except a NaN whose payload carries out of the NaN range (only a
hand-made payload in the upper mantissa bits can); the arithmetic of a step produces the default NaN.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["ALIGN", "NoiseStream", "pack", "padded", "round_into", "round_packed", "stochastic_round", "write_rounded"]

#: Elements that share one 64-bit random draw; packed tensors start at multiples of it.
ALIGN = 4
_HIGH = 1 if sys.byteorder == "little" else 0  # the int16 half of an int32 word holding its upper 16 bits


def padded(numel: int) -> int:
    """``numel`` rounded up to a multiple of :data:`ALIGN`: the room a tensor takes in a packed buffer."""
    return -(-numel // ALIGN) * ALIGN


class NoiseStream:
    """One sequence of 64-bit random draws, seeded by ``generator`` on first use and handed out in order."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._bits: np.random.PCG64 | None = None

    def add_noise(self, bits: Tensor) -> None:
        """Add the next uniform 16-bit values in [0, 65535] to the int32 ``bits`` (a multiple of :data:`ALIGN`
        elements), in place: one 64-bit draw per :data:`ALIGN` elements."""
        if bits.device.type != "cpu":
            draws = torch.empty(bits.numel() // ALIGN, dtype=torch.int64, device=bits.device)
            draws.random_(-(1 << 63), None, generator=self.generator)  # the full 64 bits of each draw
            bits.add_(draws.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF))
            return
        if self._bits is None:
            seed = torch.randint(0, 1 << 62, (), generator=self.generator, device=_device_of(self.generator))
            self._bits = np.random.PCG64(int(seed))
        values = bits.numpy()
        np.add(values, self._bits.random_raw(bits.numel() // ALIGN).view(np.uint16), out=values, casting="unsafe")


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def round_packed(packed: Tensor, noise: NoiseStream | torch.Generator | None = None) -> Tensor:
    """Round the contiguous float32 buffer ``packed`` (length a multiple of :data:`ALIGN`) stochastically, in
    place: returns a bfloat16 view of ``packed`` holding the results (``packed`` itself no longer holds floats)."""
    stream = noise if isinstance(noise, NoiseStream) else NoiseStream(noise)
    stream.add_noise(packed.view(torch.int32))
    return packed.view(torch.bfloat16)[_HIGH::2]


def pack(sources: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """One float32 buffer holding ``sources`` at offsets that are multiples of :data:`ALIGN`, and the offsets."""
    offsets, total = [], 0
    for source in sources:
        offsets.append(total)
        total += padded(source.numel())
    device = sources[0].device if sources else torch.device("cpu")
    packed = torch.zeros(total, dtype=torch.float32, device=device)
    if sources:
        views = [packed[o : o + s.numel()].view(s.shape) for o, s in zip(offsets, sources, strict=True)]
        torch._foreach_copy_(views, list(sources))
    return packed, offsets


def round_into(pairs: Sequence[tuple[Tensor, Tensor]], generator: NoiseStream | torch.Generator | None = None) -> None:
    """Round each float32 source stochastically into its bfloat16 destination (``(source, destination)`` on one
    device), all in one pass: the noise follows the order of ``pairs``."""
    if not pairs:
        return
    sources = [source for source, _ in pairs]
    packed, offsets = pack(sources)
    write_rounded(round_packed(packed, generator), offsets, [destination for _, destination in pairs])


def write_rounded(rounded: Tensor, offsets: Sequence[int], destinations: Sequence[Tensor]) -> None:
    """Copy the results of :func:`round_packed` at ``offsets`` into the bfloat16 ``destinations``."""
    views = [rounded[o : o + d.numel()].view(d.shape) for o, d in zip(offsets, destinations, strict=True)]
    torch._foreach_copy_(list(destinations), views)


def stochastic_round(values: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``values`` to bfloat16 stochastically: up with probability equal to the dropped fraction."""
    result = torch.empty_like(values, dtype=torch.bfloat16)
    round_into([(values, result)], generator)
    return result
