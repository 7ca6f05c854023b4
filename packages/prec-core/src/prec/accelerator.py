"""The accelerator base class: what a device family is called, whether it runs here, and its devices."""

from __future__ import annotations

import numbers
import reprlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from prec.errors import ConfigurationError

DevicesInput = int | str | Sequence[int] | None
#: What :func:`normalize_devices` returns for ``"auto"`` and ``None``: one device (index 0).
AUTO_DEVICES = "auto"
#: A checked ``devices`` request: ``"auto"``, a count (``-1``: every device) or distinct indices.
DeviceRequest = str | int | tuple[int, ...]

_MOST_INDICES = 1 << 16  # a range longer than this is refused before it is listed
_ACCEPTED = "an int >= 1, -1 (every device), a list of distinct indices >= 0, a string such as '2' or '0,1', or 'auto'"


@dataclass(frozen=True)
class Availability:
    """Whether an accelerator can run on this machine, and if not, why (shown by ``prec list``)."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


class Accelerator:
    """A device family (``cpu``, ``cuda``, ``xla`` …) as plugins register it.

    Subclasses set ``name``, optionally ``aliases`` and ``auto_priority`` (``accelerator="auto"`` picks the
    available accelerator with the highest one), and implement :meth:`availability` and :meth:`device_count`
    without side effects: ``prec list`` calls them for every installed accelerator and must stay fast and
    fork-safe (no CUDA context, no runtime start-up).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    auto_priority: ClassVar[int] = 0
    #: The ``torch.device`` type of this accelerator's tensors, also the autocast device type.
    device_type: ClassVar[str] = ""
    #: Install hint shown when the accelerator is missing or unavailable.
    install_hint: ClassVar[str] = ""
    #: The strategy ``strategy="auto"`` picks for one process on this accelerator.
    single_device_strategy: ClassVar[str] = "single"

    def availability(self) -> Availability:
        """Whether this accelerator can run here; the reason when not. Must not initialise the device."""
        raise NotImplementedError

    def device_count(self) -> int:
        """How many devices of this kind this machine has (0 when unavailable)."""
        raise NotImplementedError

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        """Whether the device computes in ``dtype`` natively (used for warnings and ``precision="auto"``)."""
        return True

    def auto_precision(self) -> tuple[str, str]:
        """The precision ``precision="auto"`` picks on this accelerator, and why (overridden by plugins)."""
        return "32-true", f"{self.name} has no faster precision that is numerically safe"

    def get_device(self, index: int = 0) -> torch.device:
        """The ``torch.device`` for the local device ``index``."""
        return torch.device(self.device_type or self.name, index)

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` current for this process (e.g. ``torch.cuda.set_device``)."""

    def teardown(self) -> None:
        """Release what :meth:`setup_device` acquired."""

    def parse_devices(self, devices: DevicesInput) -> list[int]:
        """Turn the Trainer's ``devices`` argument into local device indices, or raise ConfigurationError.

        The request is checked on its own first (:func:`normalize_devices`), then against :meth:`device_count`
        before any list is built, so ``devices=10**9`` is an error, not a billion-element list."""
        request = normalize_devices(devices)
        if request == AUTO_DEVICES:
            return [0]
        count = self.device_count()
        if isinstance(request, int):
            if request == -1:
                if count < 1:
                    raise ConfigurationError(f"devices=-1 asks for every {self.name} device, but this machine has 0.")
                return list(range(count))
            if request > count:
                raise ConfigurationError(
                    f"devices={request} asks for {request} {self.name} devices, but this machine has {count}."
                )
            return list(range(request))
        too_high = [index for index in request if index >= count]
        if too_high:
            raise ConfigurationError(
                f"devices={_show(devices)} asks for {self.name} device(s) {too_high}, but this machine has {count}"
                f" (valid indices 0..{count - 1})."
            )
        return list(request)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def normalize_devices(devices: object) -> DeviceRequest:
    """Check the ``devices`` argument on its own (no device count needed) and return it in one form.

    ``None`` and ``"auto"`` (any case) give ``"auto"``; ``N``, ``"N"`` and ``-1`` give a count; a list, a tuple,
    a 1-d integer array or ``"0,1"`` give a tuple of distinct indices. Anything else is a ConfigurationError
    naming what is accepted: floats (``1.5`` and ``2.0`` alike), bools, empty or duplicate indices."""
    if devices is None:
        return AUTO_DEVICES
    if isinstance(devices, str):
        return _devices_from_text(devices)
    if isinstance(devices, bool):
        raise ConfigurationError(f"devices={devices!r} is a bool; pass {_ACCEPTED}.")
    if isinstance(devices, numbers.Integral):
        count = int(devices)
        if count < 1 and count != -1:
            raise ConfigurationError(f"devices={count} must be >= 1, -1 (every device) or 'auto'.")
        return count
    if isinstance(devices, numbers.Real):
        hint = f" Did you mean devices={int(devices)}?" if float(devices).is_integer() else ""
        raise ConfigurationError(f"devices={_show(devices)} is a {type(devices).__name__}; pass {_ACCEPTED}.{hint}")
    items = _index_items(devices)
    if items is None:
        raise ConfigurationError(f"devices={_show(devices)} ({type(devices).__name__}) is not valid; pass {_ACCEPTED}.")
    return _check_indices(devices, items)


def _devices_from_text(text: str) -> DeviceRequest:
    stripped = text.strip()
    if stripped.lower() == AUTO_DEVICES:
        return AUTO_DEVICES
    if "," not in stripped:
        try:
            count = int(stripped)
        except ValueError:
            raise ConfigurationError(f"devices={_show(text)} is not valid; pass {_ACCEPTED}.") from None
        return normalize_devices(count)
    parts = [part.strip() for part in stripped.split(",")]
    if not parts[-1]:
        parts.pop()  # "0," is the index 0, as in Lightning
    if not all(part.lstrip("-").isdigit() for part in parts):
        raise ConfigurationError(f"devices={_show(text)} is not a list of indices; pass {_ACCEPTED}.")
    return _check_indices(text, [int(part) for part in parts])


def _index_items(devices: object) -> list[object] | None:
    """The items of a list, tuple, range or 1-d array (numpy or torch), or None for anything else."""
    if isinstance(devices, range) and len(devices) > _MOST_INDICES:
        raise ConfigurationError(f"devices={devices!r} asks for {len(devices)} devices; no machine has that many.")
    if isinstance(devices, (list, tuple, range)):
        return list(devices)
    tolist = getattr(devices, "tolist", None)
    if callable(tolist) and getattr(devices, "ndim", None) == 1:
        items = tolist()
        return items if isinstance(items, list) else None
    return None


def _check_indices(devices: object, items: Sequence[object]) -> tuple[int, ...]:
    if not items:
        raise ConfigurationError(f"devices={_show(devices)} selects no device; pass {_ACCEPTED}.")
    bad = [item for item in items if isinstance(item, bool) or not isinstance(item, numbers.Integral)]
    if bad:
        raise ConfigurationError(f"devices={_show(devices)} holds {_show(bad)}, which are not device indices (ints).")
    indices = tuple(int(item) for item in items)  # type: ignore[call-overload]
    negative = [index for index in indices if index < 0]
    if negative:
        raise ConfigurationError(f"devices={_show(devices)} holds negative indices {negative}; indices start at 0.")
    repeated = sorted(index for index, times in Counter(indices).items() if times > 1)
    if repeated:
        raise ConfigurationError(
            f"devices={_show(devices)} lists device(s) {repeated} more than once; each device runs one process."
        )
    return indices


def _show(value: object) -> str:
    """A repr short enough for an error message, whatever the user passed."""
    return reprlib.repr(value)
