"""Trainer.init_module: parameters born on the device in the precision's dtype, optionally uninitialised."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import prec

pytestmark = pytest.mark.filterwarnings("ignore::prec.errors.PerformanceWarning")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32-true", torch.float32),
        ("bf16-mixed", torch.float32),
        ("bf16-true", torch.bfloat16),
        ("16-true", torch.float16),
    ],
)
def test_init_module_builds_in_the_precision_dtype(precision: str, dtype: torch.dtype) -> None:
    trainer = prec.Trainer(accelerator="cpu", precision=precision)
    with trainer.init_module():
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        inside = torch.get_default_dtype()
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert inside == dtype
    assert torch.get_default_dtype() == torch.float32


def test_init_module_restores_the_default_dtype_when_the_body_raises() -> None:
    trainer = prec.Trainer(accelerator="cpu", precision="bf16-true")
    with pytest.raises(ValueError, match="bad layer"), trainer.init_module():
        raise ValueError("bad layer")
    assert torch.get_default_dtype() == torch.float32


def test_empty_init_skips_weight_initialisation() -> None:
    trainer = prec.Trainer(accelerator="cpu")
    state = torch.get_rng_state()
    with trainer.init_module(empty_init=True):
        torch.nn.Linear(64, 64)
    assert torch.equal(state, torch.get_rng_state())  # no init function drew random numbers
    with trainer.init_module(empty_init=False):
        torch.nn.Linear(64, 64)
    assert not torch.equal(state, torch.get_rng_state())


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, warnings
    import torch, prec
    warnings.simplefilter("ignore")
    trainer = prec.Trainer(accelerator="cpu", precision=sys.argv[1])
    import os
    with open("/proc/self/statm") as statm:  # the current resident size, not the peak so far
        before = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    try:  # forget the peak of set-up (imports, registry): only what building the model adds counts
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    with trainer.init_module():
        model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(16)])  # 67M parameters
    with open("/proc/self/status") as status:
        peaks = [line for line in status if line.startswith("VmHWM:")]
    after = int(peaks[0].split()[1]) if peaks else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": after - before, "dtype": str(model[0].weight.dtype)}))
    """
)


def _peak_growth(precision: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, precision], capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bf16_true_never_materialises_float32_weights() -> None:
    """Peak memory, not just the final dtype: building in bf16 must cost about half of float32 (268 MB)."""
    full = _peak_growth("32-true")
    half = _peak_growth("bf16-true")
    assert full["dtype"] == "torch.float32" and half["dtype"] == "torch.bfloat16"
    assert full["growth_kib"] > 200_000  # the probe measures what it claims
    assert half["growth_kib"] <= 0.6 * full["growth_kib"], (half, full)
