"""What the Trainer plugin and the Fabric plugin share: building the prec precision, and handing it every call
of Lightning's precision-plugin interface that means the same thing on both sides.

Lightning's ``Precision`` (Fabric's, which the Trainer's subclasses) and prec's ``Precision`` describe the same
job with nearly the same method names, so most of the bridge is one line per method. Only the step (``backward``,
``optimizer_step``) differs between the Trainer and Fabric; it lives in :mod:`prec_lightning._trainer` and
:mod:`prec_lightning._fabric`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from lightning.fabric.plugins.precision import Precision as LightningFabricPrecision
from torch.nn import Module
from torch.optim import Optimizer
from typing_extensions import override

import prec
from prec.errors import ConfigurationError
from prec.precision import NonFinitePolicy
from prec.precision import Precision as PrecPrecision

__all__ = ["PrecisionBridge", "build_precision"]


def build_precision(
    precision: str | int | PrecPrecision,
    accelerator: str,
    nonfinite: NonFinitePolicy | str,
    options: dict[str, Any],
) -> PrecPrecision:
    """The prec precision for ``precision``: looked up in prec's registry now, so an unknown name or an unsupported
    pair fails where the plugin is built, with prec's own error."""
    if isinstance(precision, PrecPrecision):
        if options:
            raise ConfigurationError(
                f"precision options {sorted(options)} cannot be applied to {precision!r}, which is built already;"
                " pass a precision name with the options, or build the instance with prec.get_precision(name,"
                " accelerator, **options)."
            )
        built = precision
    else:
        built = prec.get_precision(precision, accelerator, **options)
    built.set_nonfinite_policy(nonfinite)
    return built


class PrecisionBridge(LightningFabricPrecision):
    """Lightning's precision-plugin interface, answered by a prec precision (:attr:`prec_precision`)."""

    #: The prec precision every call is handed to.
    prec_precision: PrecPrecision

    def _init_bridge(
        self,
        precision: str | int | PrecPrecision,
        accelerator: str,
        nonfinite: NonFinitePolicy | str,
        options: dict[str, Any],
    ) -> None:
        self.prec_precision = build_precision(precision, accelerator, nonfinite, options)
        # Lightning reads the name from here (``trainer.precision``); prec's names are the same strings.
        self.precision = self.prec_precision.name  # type: ignore[assignment]
        self._checked_device: torch.device | None = None

    # -- what Lightning's loops and callbacks may read ----------------------------------------------------------
    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The grad scaler (``trainer.scaler`` in Lightning), or ``None`` for precisions without loss scaling."""
        return self.prec_precision.scaler

    @property
    def loss_scale(self) -> float | None:
        """The current loss scale, or ``None`` without a grad scaler. Reading it may synchronise with the device."""
        scaler = self.prec_precision.scaler
        return float(scaler.get_scale()) if scaler is not None else None

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for inf/NaN gradients (by the grad scaler or prec's non-finite guard)."""
        return self.prec_precision.skipped_steps

    @property
    def step_skipped(self) -> bool:
        """Whether the last optimizer step was skipped for inf/NaN gradients."""
        return self.prec_precision.step_skipped

    def metrics(self) -> dict[str, float]:
        """prec's own numbers (``loss_scale`` under a grad scaler, ``skipped_steps`` once there are any)."""
        return self.prec_precision.metrics()

    # -- building and converting the model ---------------------------------------------------------------------
    @override
    def convert_module(self, module: Module) -> Module:
        """prec's run set-up in prec's order: global settings, the cast, then the checks of the converted module."""
        self.prec_precision.setup()
        module = self.prec_precision.convert_module(module)
        self.prec_precision.setup_module(module)
        return module

    @override
    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return self.prec_precision.tensor_init_context()

    @override
    def module_init_context(self) -> AbstractContextManager[Any]:
        return self.prec_precision.module_init_context()

    # -- every step -------------------------------------------------------------------------------------------
    @override
    def forward_context(self) -> AbstractContextManager[Any]:
        return self.prec_precision.forward_context()

    @override
    def convert_input(self, data: Any) -> Any:
        return self.prec_precision.convert_input(data)

    @override
    def convert_output(self, data: Any) -> Any:
        return self.prec_precision.convert_output(data)

    @override
    def unscale_gradients(self, optimizer: Optimizer) -> None:
        self.prec_precision.unscale_gradients(optimizer)

    @override
    def main_params(self, optimizer: Optimizer) -> Iterator[torch.Tensor]:
        """The tensors the optimizer steps: under ``master_weights="fp32"`` the float32 copies, whose gradients are
        the ones clipping must see."""
        for group in optimizer.param_groups:
            yield from group["params"]

    # -- state --------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        """prec's state (loss scale, master copies, compensation, rounding RNG, skip counters) under its name."""
        return {"name": self.prec_precision.name, "state": self.prec_precision.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("name")
        if saved != self.prec_precision.name:
            warnings.warn(
                f"the precision state was saved under {saved!r}; restoring it into {self.prec_precision.name!r}"
                " keeps what the two have in common (prec warns about anything it drops).",
                prec.PrecWarning,
                stacklevel=2,
            )
        self.prec_precision.load_state_dict(state_dict.get("state", {}))

    @override
    def teardown(self) -> None:
        self.prec_precision.teardown()

    # -- checks -------------------------------------------------------------------------------------------------
    def check_device(self, device: torch.device) -> None:
        """Refuse to run a precision built for another device type (autocast for ``cuda`` does nothing to CPU
        tensors: that would be a silent fallback to 32-bit math)."""
        if self._checked_device == device:
            return
        built_for = self.prec_precision.device_type
        if built_for is not None and built_for != device.type:
            raise ConfigurationError(
                f"{self.prec_precision!r} was built for device type {built_for!r}, but Lightning runs the model on"
                f" {device}. Build the plugin with accelerator={device.type!r}."
            )
        self._checked_device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prec_precision!r})"
