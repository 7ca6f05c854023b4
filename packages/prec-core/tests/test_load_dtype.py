"""load_from_checkpoint(dtype=/precision=): the model is built in the dtype (never in float32 first, measured in
bytes), and a bf16-true checkpoint's master_weights give the full float32 values of weights loaded wider."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.checkpoint.io import read_checkpoint

MIB = 1 << 20


class Net(prec.TrainingModule):
    def __init__(self, width: int = 16, reverse_optimizer_order: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a = torch.nn.Linear(8, width)
        self.norm = torch.nn.LayerNorm(width)
        self.b = torch.nn.Linear(width, 1)
        self.register_buffer("offset", torch.arange(width, dtype=torch.get_default_dtype()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.norm(self.a(x)) + self.offset)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.parameters())
        return torch.optim.Adam(params[::-1] if self.hparams.reverse_optimizer_order else params, lr=1e-3)


def _train(tmp_path: Path, master_weights: str | None, **hparams: Any) -> Path:
    options = {"master_weights": master_weights} if master_weights else None
    trainer = prec.Trainer(
        accelerator="cpu", precision="bf16-true", precision_options=options, max_steps=4, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=16)
    trainer.fit(Net(**hparams), data)
    path = tmp_path / f"{master_weights}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("reverse", [False, True], ids=["model-order", "reversed-optimizer-order"])
def test_float32_load_of_fp32_masters_takes_the_float32_copies(tmp_path: Path, reverse: bool) -> None:
    path = _train(tmp_path, "fp32", reverse_optimizer_order=reverse)
    checkpoint = read_checkpoint(path)
    masters = checkpoint["precision_state"]["masters"][0]
    names = [name for name, _ in Net().named_parameters()]
    expected = dict(zip(names[::-1] if reverse else names, masters, strict=True))
    model = Net.load_from_checkpoint(path, dtype=torch.float32)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32
        assert torch.equal(param, expected[name]), name
        assert not torch.equal(param, checkpoint["state_dict"][name].float()), f"{name}: the bf16 value was loaded"
    as_built = Net.load_from_checkpoint(path)  # a float32 model without dtype= gets the same full values
    assert all(torch.equal(p, expected[n]) for n, p in as_built.named_parameters())


def test_float32_load_of_kahan_adds_the_compensation(tmp_path: Path) -> None:
    path = _train(tmp_path, "kahan")
    checkpoint = read_checkpoint(path)
    compensation = checkpoint["precision_state"]["compensation"][0]
    model = Net.load_from_checkpoint(path, precision="32-true")
    for (name, param), comp in zip(model.named_parameters(), compensation, strict=True):
        assert torch.equal(param, checkpoint["state_dict"][name].float() + comp.float()), name


def test_bf16_load_is_bfloat16_and_exactly_the_stored_weights(tmp_path: Path) -> None:
    path = _train(tmp_path, "fp32")
    stored = read_checkpoint(path)["state_dict"]
    model = Net.load_from_checkpoint(path, precision="bf16-true")
    state = model.state_dict()
    assert {value.dtype for value in state.values()} == {torch.bfloat16}
    assert all(torch.equal(state[name], stored[name]) for name in stored)
    # the non-persistent buffer, which the checkpoint does not hold, is real (the model was rebuilt), in bf16
    assert not model.offset.is_meta and model.offset.dtype == torch.bfloat16
    assert torch.equal(model.offset, torch.arange(16, dtype=torch.bfloat16))
    assert model(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_precision_names_stand_for_their_weight_dtype(tmp_path: Path) -> None:
    path = _train(tmp_path, None)
    for precision, dtype in [
        ("bf16-mixed", torch.float32),
        ("16-true", torch.float16),
        ("fp8-bf16-true", torch.bfloat16),
    ]:
        model = Net.load_from_checkpoint(path, precision=precision)
        assert {p.dtype for p in model.parameters()} == {dtype}, precision
    assert Net.load_from_checkpoint(path, dtype="float16").a.weight.dtype == torch.float16


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"dtype": torch.int8}, "dtype=torch.int8"),
        ({"dtype": "bfloat17"}, "dtype='bfloat17'"),
        ({"precision": "auto"}, "precision='auto'"),
        ({"precision": "fp16"}, "precision="),
        ({"dtype": torch.float32, "precision": "bf16-true"}, "precision='bf16-true'"),
    ],
)
def test_bad_dtype_or_precision_is_a_configuration_error(tmp_path: Path, arguments: dict[str, Any], named: str) -> None:
    path = _train(tmp_path, None)
    with pytest.raises(prec.ConfigurationError, match="load_from_checkpoint") as error:
        Net.load_from_checkpoint(path, **arguments)
    assert named in str(error.value)


_BIG_MODEL = """
import torch, prec

class Big(prec.TrainingModule):
    def __init__(self, width: int = 2048, depth: int = 6) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(depth)))
"""

_MEASURE = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from big_model import Big
import prec

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

path, how = sys.argv[2], sys.argv[3]
if how == "save":
    from prec.checkpoint.io import atomic_save
    atomic_save(
        {"state_dict": Big().state_dict(), "hyper_parameters": {"width": 2048, "depth": 6}}, path)
    sys.exit(0)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak resident set restarts from here
start = kib("VmRSS")
if how == "dtype":
    model = Big.load_from_checkpoint(path, dtype=torch.bfloat16)
else:  # what loading did before: a float32 model, its weights loaded, then cast
    model = Big.load_from_checkpoint(path).to(torch.bfloat16)
assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
print(json.dumps({"peak_bytes": (kib("VmHWM") - start) * 1024}))
"""


def _peak(tmp_path: Path, how: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path), str(tmp_path / "big.ckpt"), how],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]) if how != "save" else 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_bf16_load_of_a_100mb_model_never_holds_it_in_float32(tmp_path: Path) -> None:
    (tmp_path / "big_model.py").write_text(textwrap.dedent(_BIG_MODEL))
    _peak(tmp_path, "save")
    float32_bytes = sum(4 * (2048 * 2048 + 2048) for _ in range(6))  # ~100 MB: also what the checkpoint holds
    bf16_bytes = float32_bytes // 2
    in_dtype, float32_first = _peak(tmp_path, "dtype"), _peak(tmp_path, "float32-first")
    # the stored tensors plus the bf16 model, with room for the allocator; a float32 model would add 100 MB
    assert in_dtype <= float32_bytes + bf16_bytes + 40 * MIB, (in_dtype / MIB, float32_first / MIB)
    assert float32_first >= in_dtype + 60 * MIB, (in_dtype / MIB, float32_first / MIB)
