"""prec-lightning: keep Lightning, gain prec's precisions.

Any precision in prec's registry (built-in, prec-torchao's fp8, a third party's), with its options, as a precision
plugin of Lightning's Trainer and of Fabric::

    import lightning
    import prec_lightning

    trainer = lightning.Trainer(plugins=[prec_lightning.Precision("bf16-true", master_weights="kahan")])
    fabric = lightning.Fabric(plugins=[prec_lightning.FabricPrecision("bf16-mixed")])

The precision is built with ``prec.get_precision`` when the plugin is built, so an unknown name or an unsupported
pair is prec's error right there. prec-lightning registers nothing in prec (it has no entry point).
"""

from __future__ import annotations

try:
    import lightning  # noqa: F401 - fail here, with what to install, rather than deep inside an import chain
except ModuleNotFoundError as error:  # pragma: no cover - exercised in an environment without Lightning
    raise ModuleNotFoundError(
        "prec-lightning plugs prec into Lightning, which is not installed: pip install 'prec-lightning[lightning]'"
        " (or pip install 'lightning>=2.5')."
    ) from error

from prec_lightning._fabric import FabricPrecision
from prec_lightning._trainer import Precision

__all__ = ["FabricPrecision", "Precision"]
