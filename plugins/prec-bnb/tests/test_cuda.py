"""On a real GPU (skipped without one): every mode, int8-training included, trains its float32 parameters."""

from __future__ import annotations

import pytest
import torch

import prec
import prec_bnb
from prec.testing import train_losses


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize("name", prec_bnb.NAMES)
def test_fine_tuning_on_a_gpu(name: str) -> None:
    precision = prec.get_precision(name, "cuda", ignore_modules=["2"])
    torch.manual_seed(0)
    with torch.device("cuda"), precision.module_init_context():
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 16))
    precision.convert_module(model)
    x = torch.randn(64, 256, device="cuda")
    y = torch.randint(0, 16, (64,), device="cuda")
    losses = train_losses(precision, model, x, y)
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad(), precision.forward_context():
        assert torch.isfinite(model(x)).all()  # inference too (int8-training's CUDA-only kernel)
