"""A sharded (torch.distributed.checkpoint) load never changes a tensor's dtype without saying so."""

from __future__ import annotations

import warnings

import pytest
import torch

import prec
from prec.checkpoint.sharded import load_sharded, save_sharded


def test_a_sharded_load_into_another_dtype_names_the_cast_tensors(tmp_path) -> None:
    torch.manual_seed(0)
    saved = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(saved.parameters(), lr=0.1)
    saved(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    save_sharded(tmp_path / "ckpt", saved, [optimizer], {})

    narrow = torch.nn.Linear(4, 2).to(torch.bfloat16)
    narrow_optimizer = torch.optim.Adam(narrow.parameters(), lr=0.1)
    narrow(torch.randn(3, 4, dtype=torch.bfloat16)).sum().backward()
    narrow_optimizer.step()
    with pytest.warns(
        prec.PrecWarning, match=r"cast on load: .*weight \(torch\.float32 -> torch\.bfloat16\)"
    ) as caught:
        load_sharded(tmp_path / "ckpt", narrow, [narrow_optimizer])
    message = str(caught[0].message)
    assert "exp_avg_sq (torch.float32 -> torch.bfloat16)" in message
    assert torch.equal(narrow.weight, saved.weight.detach().to(torch.bfloat16))


def test_a_sharded_load_in_the_same_dtype_says_nothing(tmp_path) -> None:
    module = torch.nn.Linear(4, 2)
    save_sharded(tmp_path / "ckpt", module, [], {})
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)
        load_sharded(tmp_path / "ckpt", torch.nn.Linear(4, 2), [])
