"""The precision's state goes through Lightning's own checkpointing (``trainer.save_checkpoint``, ``ckpt_path``):
a run resumed from the end of its first epoch ends exactly where the uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import load_module

import prec
import prec_lightning

script = load_module(Path(__file__).with_name("lightning_script.py"), "_prec_lightning_script")

CASES = [
    ("bf16-mixed", {}, set()),
    ("bf16-true", {"master_weights": "fp32"}, {"masters"}),
    ("bf16-true", {"master_weights": "kahan"}, {"compensation", "generator"}),
    ("bf16-true", {"master_weights": "stochastic"}, {"generator"}),
    # loss scale 2**20 overflows float16 gradients at first: skipped steps and back-offs are part of the state
    ("16-mixed", {"init_scale": 2.0**20, "growth_interval": 2}, {"scaler", "skipped_steps"}),
]


def _fit(precision: str, options: dict[str, Any], epochs: int, ckpt_path: str | None = None) -> tuple[Any, Any]:
    plugin = prec_lightning.Precision(precision, "cpu", **options)
    module = script.LitNet()
    trainer = script.lightning_trainer(plugin, max_epochs=epochs)
    trainer.fit(module, script.loader(), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
@pytest.mark.parametrize(
    ("precision", "options", "saved_keys"),
    CASES,
    ids=[f"{p}-{o.get('master_weights', 'plain')}" for p, o, _ in CASES],
)
def test_resume_gives_the_weights_of_an_uninterrupted_run(
    precision: str, options: dict[str, Any], saved_keys: set[str], tmp_path: Path
) -> None:
    straight, straight_trainer = _fit(precision, options, epochs=2)

    _, first = _fit(precision, options, epochs=1)
    path = str(tmp_path / "epoch1.ckpt")
    first.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    saved = checkpoint[type(first.precision_plugin).__qualname__]
    assert saved["name"] == precision
    assert saved_keys <= set(saved["state"])

    resumed, resumed_trainer = _fit(precision, options, epochs=2, ckpt_path=path)
    script.assert_bitwise_equal(script.weights(resumed), script.weights(straight))
    assert resumed_trainer.global_step == straight_trainer.global_step == 2 * script.BATCHES
    mine, theirs = resumed_trainer.precision_plugin, straight_trainer.precision_plugin
    assert mine.skipped_steps == theirs.skipped_steps
    assert mine.loss_scale == theirs.loss_scale
    if "master_weights" in options:
        for name, param in resumed.named_parameters():
            other = dict(straight.named_parameters())[name]
            got = mine.prec_precision.effective_weight(param)
            assert torch.equal(got, theirs.prec_precision.effective_weight(other)), name


@pytest.mark.usefixtures("quiet", "third_party_16_mixed")
def test_the_scaler_state_is_really_restored(tmp_path: Path) -> None:
    """Not just equal by accident: the resumed run starts from the saved loss scale, not the initial one."""
    options = {"init_scale": 2.0**20, "growth_interval": 2}
    _, first = _fit("16-mixed", options, epochs=1)
    assert first.precision_plugin.skipped_steps > 0
    path = str(tmp_path / "epoch1.ckpt")
    first.save_checkpoint(path)
    plugin = prec_lightning.Precision("16-mixed", "cpu", **options)
    plugin.load_state_dict(torch.load(path, weights_only=False)[type(plugin).__qualname__])
    assert plugin.loss_scale == first.precision_plugin.loss_scale != 2.0**20
    assert plugin.skipped_steps == first.precision_plugin.skipped_steps


@pytest.mark.usefixtures("quiet")
def test_state_from_another_precision_is_loaded_with_a_warning(tmp_path: Path) -> None:
    _, first = _fit("bf16-true", {"master_weights": "fp32"}, epochs=1)
    path = str(tmp_path / "epoch1.ckpt")
    first.save_checkpoint(path)
    with pytest.warns(prec.PrecWarning, match="master_weights='fp32'"):
        _fit("bf16-true", {"master_weights": "kahan"}, epochs=2, ckpt_path=path)
    with pytest.warns(prec.PrecWarning, match="saved under 'bf16-true'"):
        _fit("bf16-mixed", {}, epochs=2, ckpt_path=path)
