"""prec-example-cpu16: ``16-mixed`` on the CPU, a pair prec's own plugins deliberately leave out.

float16 autocast on a CPU is usually slower than float32 and float16's narrow range needs loss scaling, so
prec-cpu offers bf16-mixed instead. This package shows that a third party can add the pair anyway, using only the
public API: :data:`prec.hookimpl`, :class:`prec.MixedPrecision` and the ``register`` callback. Install it and::

    prec.Trainer(accelerator="cpu", precision="16-mixed")
"""

from __future__ import annotations

from typing import Any

import torch

import prec

__all__ = ["cpu_16_mixed", "prec_register_precisions"]


def cpu_16_mixed(accelerator: prec.Accelerator, **options: Any) -> prec.Precision:
    """float32 weights, float16 autocast on the CPU, and a dynamic ``torch.amp.GradScaler("cpu")``.

    ``options`` are the scaler's (``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``)
    and ``cache_enabled``, passed on by ``Trainer(precision_options=...)`` or ``prec.get_precision``.
    """
    return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, **options)


@prec.hookimpl
def prec_register_precisions(register: Any) -> None:
    register(
        "16-mixed",
        "cpu",
        cpu_16_mixed,
        description="float32 weights, float16 autocast and a grad scaler on CPU (prec-example-cpu16)",
    )
