"""The accelerator base class: what a device family is called, whether it runs here, and its devices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from prec.errors import ConfigurationError

DevicesInput = int | str | Sequence[int] | None


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
        """Turn the Trainer's ``devices`` argument into local device indices, or raise ConfigurationError."""
        count = self.device_count()
        if devices is None or devices == "auto":
            return [0]
        if devices == -1 or devices == "-1":
            indices = list(range(count))
        elif isinstance(devices, bool):
            raise ConfigurationError(f"devices={devices!r} is not valid; pass an int, a list of indices or 'auto'.")
        elif isinstance(devices, int):
            if devices < 1:
                raise ConfigurationError(f"devices={devices} must be >= 1, -1 (all) or 'auto'.")
            indices = list(range(devices))
        elif isinstance(devices, str):
            try:
                return self.parse_devices(int(devices))
            except ValueError:
                pass
            try:
                indices = [int(part) for part in devices.split(",") if part.strip()]
            except ValueError:
                raise ConfigurationError(
                    f"devices={devices!r} is not valid; pass an int, a list of indices or 'auto'."
                ) from None
        else:
            indices = [int(index) for index in devices]
        if not indices:
            raise ConfigurationError(f"devices={devices!r} selects no device; {self.name} has {count}.")
        too_high = [index for index in indices if index >= count or index < 0]
        if too_high:
            raise ConfigurationError(
                f"devices={devices!r} asks for {self.name} device(s) {too_high}, but this machine has {count}"
                f" (valid indices 0..{count - 1})."
            )
        return indices

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
