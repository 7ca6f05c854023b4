"""The plugin for Lightning Fabric: ``Fabric(plugins=[prec_lightning.FabricPrecision("bf16-true", ...)])``.

Fabric calls ``forward_context``/``convert_input``/``convert_output`` around every forward of a set-up module,
``backward`` from ``fabric.backward(loss)`` and ``optimizer_step`` from ``optimizer.step()``; each goes to the prec
precision, so the loop below runs exactly as the one in prec's ``Precision`` docstring::

    fabric = Fabric(accelerator="cpu", plugins=[FabricPrecision("bf16-true", master_weights="kahan")])
    model, optimizer = fabric.setup(model, optimizer)
    loss = loss_fn(model(x), y)
    fabric.backward(loss)
    optimizer.step()
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from prec.precision import NonFinitePolicy
from prec.precision import Precision as PrecPrecision
from prec_lightning._bridge import PrecisionBridge

__all__ = ["FabricPrecision"]


class FabricPrecision(PrecisionBridge):
    """Any precision of prec's registry as a Lightning Fabric precision plugin.

    Takes the arguments of :class:`prec_lightning.Precision` except ``log_metrics`` (Fabric logs only what the
    loop logs: read :attr:`loss_scale`, :attr:`skipped_steps` or :meth:`metrics`). Fabric checkpoints hold what
    the loop passes to ``fabric.save``: include ``precision.state_dict()`` there to resume the loss scale and
    master copies.
    """

    def __init__(
        self,
        precision: str | int | PrecPrecision = "32-true",
        accelerator: str = "auto",
        *,
        nonfinite: NonFinitePolicy | str = "skip",
        **options: Any,
    ) -> None:
        self._init_bridge(precision, accelerator, nonfinite, options)

    @override
    def pre_backward(self, tensor: Tensor, module: Module | None) -> Any:
        """The first backward is where Fabric shows the device: refuse a precision built for another one."""
        self.check_device(tensor.device)
        return None

    @override
    def backward(self, tensor: Tensor, model: Module | None, *args: Any, **kwargs: Any) -> None:
        self.prec_precision.backward(tensor, model, *args, **kwargs)

    @override
    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> Any:
        """prec's guarded step (through the grad scaler where there is one); a ``closure`` (LBFGS) is stepped
        through, unguarded, as prec documents."""
        closure = kwargs.pop("closure", None)
        return self.prec_precision.optimizer_step(optimizer, closure, **kwargs)
