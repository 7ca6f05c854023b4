"""Hand-edited or mismatched checkpoint contents are CheckpointErrors at load time, naming the file and part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prec.errors import CheckpointError
from prec.training.checkpointing import (
    atomic_save,
    check_foreign_checkpoint,
    check_model_state,
    load_optimizer_state,
    read_checkpoint,
)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))


def trained_state(optimizer_type: type[torch.optim.Optimizer], **kwargs: Any) -> dict[str, Any]:
    net = model()
    optimizer = optimizer_type(net.parameters(), lr=0.1, **kwargs)
    net(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize(
    ("edit", "part"),
    [
        ({"state_dict": 5}, "'state_dict' is of type int"),
        ({"state_dict": {1: torch.ones(1)}}, "keys that are not names"),
        ({"optimizer_states": {"a": 1}}, "'optimizer_states' is of type dict"),
        ({"optimizer_states": [5]}, r"optimizer_states\[0\] is not an optimizer state_dict"),
        ({"loops": {"epoch": "3"}}, r"loops\['epoch'\] is '3'"),
    ],
)
def test_hand_edited_parts_are_named(tmp_path: Path, edit: dict[str, Any], part: str) -> None:
    path = tmp_path / "edited.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(2)}, "loops": {"epoch": 1}, **edit}, path)
    with pytest.raises(CheckpointError, match=part) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_non_tensor_weights_are_named() -> None:
    with pytest.raises(CheckpointError, match=r"x\.ckpt: 'state_dict' holds non-tensors .*0\.weight \(int\)"):
        check_model_state(Path("x.ckpt"), {"0.weight": 5}, model().state_dict())


def test_a_wrong_shaped_optimizer_tensor_is_refused_and_the_optimizer_untouched() -> None:
    saved = trained_state(torch.optim.Adam)
    saved["state"][0]["exp_avg"] = torch.zeros(4, 3)  # the weight is (3, 4)
    optimizer = torch.optim.Adam(model().parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"a\.ckpt: optimizer 0 \(Adam\): state 'exp_avg' of parameter 0"):
        load_optimizer_state(Path("a.ckpt"), 0, saved, optimizer)
    assert optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize(
    ("saved_by", "saved_kwargs", "resumed_by", "resumed_kwargs"),
    [
        (torch.optim.Adam, {}, torch.optim.SGD, {"momentum": 0.9}),
        (torch.optim.SGD, {"momentum": 0.9}, torch.optim.Adam, {}),
    ],
)
def test_state_of_another_optimizer_is_refused_before_the_first_step(
    saved_by: type[torch.optim.Optimizer],
    saved_kwargs: dict[str, Any],
    resumed_by: type[torch.optim.Optimizer],
    resumed_kwargs: dict[str, Any],
) -> None:
    net = model()
    optimizer = resumed_by(net.parameters(), lr=0.1, **resumed_kwargs)
    with pytest.raises(CheckpointError, match="written by a different optimizer"):
        load_optimizer_state(Path("a.ckpt"), 0, trained_state(saved_by, **saved_kwargs), optimizer)
    net(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # still a working optimizer


def test_missing_and_extra_parameter_groups_are_refused() -> None:
    saved = trained_state(torch.optim.SGD)
    net = model()
    two_groups = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[1].parameters()}], lr=0.1)
    with pytest.raises(CheckpointError, match="has 2 parameter groups, the checkpoint 1"):
        load_optimizer_state(Path("a.ckpt"), 0, saved, two_groups)
    fewer = torch.optim.SGD(net[0].parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="parameter group 0 has 2 parameters, the checkpoint 4"):
        load_optimizer_state(Path("a.ckpt"), 0, saved, fewer)


def test_a_fitting_state_loads() -> None:
    saved = trained_state(torch.optim.Adam)
    optimizer = torch.optim.Adam(model().parameters(), lr=0.5)
    load_optimizer_state(Path("a.ckpt"), 0, saved, optimizer)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])


def lightning_checkpoint() -> dict[str, Any]:
    """The top-level layout Lightning 2.x writes (ModelCheckpoint after epoch 3)."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": model().state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {}},
        "optimizer_states": [trained_state(torch.optim.SGD)],
        "lr_schedulers": [],
    }


def test_a_lightning_checkpoint_says_what_fit_cannot_resume(tmp_path: Path) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning_checkpoint(), path)
    checkpoint = read_checkpoint(path)  # its weights read fine
    check_foreign_checkpoint(path, checkpoint, "validate")
    with pytest.raises(
        CheckpointError, match=r"written by PyTorch Lightning 2\.6\.6 \(epoch 3, global step 120\)"
    ) as caught:
        check_foreign_checkpoint(path, checkpoint, "fit")
    assert "cannot resume its training exactly" in str(caught.value)
    assert "load_state_dict" in str(caught.value)
    check_foreign_checkpoint(path, {"state_dict": {}}, "fit")  # prec's own: nothing to say
