"""bf16-true's ``master_weights`` and ``keep_float32`` under FSDP2 (and the cheap modes under DDP), for real on
two gloo processes.

One launch (prec starts rank 1 itself) runs each scenario: a fit, and the same fit interrupted after one epoch
and resumed from its sharded checkpoint. Each rank writes what it saw; the assertions run here.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import sibling

import prec

pytestmark = pytest.mark.slow

HANG_GUARD_S = 420  # the launch takes about 30 s here
MODES = ("fp32", "kahan", "stochastic")

MODEL = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec


    def data():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(64, 8, generator=generator)
        return TensorDataset(x, torch.tanh(x @ torch.randn(8, 1, generator=generator)))


    class Net(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(8, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.head = torch.nn.Linear(16, 1)
            self.seen = {}
            self.norm.register_forward_hook(self._record_norm)

        def _record_norm(self, module, inputs, output):
            self.seen["norm_input"] = str(inputs[0].dtype)
            self.seen["norm_output"] = str(output.dtype)

        def forward(self, x):
            return self.head(self.norm(torch.relu(self.proj(x))))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x).float(), y)

        def on_after_backward(self):
            self.seen["grads"] = {n: str(p.grad.dtype) for n, p in self.named_parameters()}

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)


    def fit(mode, max_epochs, ckpt_path=None, out=None, strategy="fsdp", seed=None, devices=None):
        model = Net()
        if seed is not None:  # a torch seed of each rank's own (e.g. for per-rank augmentation)
            torch.manual_seed(seed + int(os.environ.get("RANK", "0")))
        trainer = prec.Trainer(
            accelerator="cpu", strategy=strategy, devices=devices or (1 if strategy == "auto" else 2),
            precision="bf16-true",
            precision_options={"master_weights": mode, "keep_float32": [torch.nn.LayerNorm]},
            max_epochs=max_epochs, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=out, logger=False,
        )
        global_batch = 8 if trainer.world_size == 1 else 4  # one process on the global batch, or 2 ranks x 4
        trainer.fit(model, DataLoader(data(), batch_size=global_batch), ckpt_path=ckpt_path)
        return trainer, model
    """
)

WORKER = MODEL + textwrap.dedent(
    """
    out, modes = Path(sys.argv[1]), sys.argv[2].split(",")
    for mode in modes:
        trainer, model = fit(mode, 2, out=out)
        rank = trainer.global_rank
        optimizer = trainer.optimizers[0]
        info = {
            "world_size": trainer.world_size,
            "params": {n: [type(p).__name__, str(p.dtype)] for n, p in model.named_parameters()},
            "stepped": sorted({str(p.dtype) for g in optimizer.param_groups for p in g["params"]}),
            "state": sorted({str(v.dtype) for s in optimizer.state.values() for v in s.values() if v.dim()}),
            **model.seen,
        }
        (out / f"{mode}_rank{rank}.json").write_text(json.dumps(info))
        torch.save(trainer.strategy.module_state_dict(model), out / f"{mode}_rank{rank}.pt")

        first, _ = fit(mode, 1, out=out)
        first.save_checkpoint(out / f"{mode}_epoch1.ckpt")
        resumed, model = fit(mode, 2, ckpt_path=out / f"{mode}_epoch1.ckpt", out=out)
        torch.save(resumed.strategy.module_state_dict(model), out / f"{mode}_resumed_rank{rank}.pt")
        # The reverse: a single-process checkpoint (written by the test) resumes under FSDP.
        from_single, model = fit(mode, 2, ckpt_path=out / f"{mode}_single_epoch1.ckpt", out=out)
        torch.save(from_single.strategy.module_state_dict(model), out / f"{mode}_from_single_rank{rank}.pt")
        if mode != "fp32":  # DDP: each rank rounds its replica with the same draws
            replica, model = fit(mode, 2, out=out, strategy="ddp", seed=1000)
            torch.save(replica.strategy.module_state_dict(model), out / f"{mode}_ddp_rank{rank}.pt")
    """
)


def _model() -> dict[str, Any]:
    """The worker's model, data and fit, for the single-process runs."""
    namespace: dict[str, Any] = {"__name__": "fsdp_precision_model"}
    exec(MODEL, namespace)  # noqa: S102 - the worker's own definitions
    return namespace


@pytest.fixture(scope="module")
def fsdp_precision_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp_precision")
    model = _model()
    for mode in MODES:
        trainer, _ = model["fit"](mode, 1, out=out, strategy="auto")
        trainer.save_checkpoint(out / f"{mode}_single_epoch1.ckpt")
    script = out / "worker.py"
    script.write_text(WORKER)
    ddp = sibling("test_distributed_ddp.py")  # its worker launch: no launcher variables, a hang guard
    ddp.run_worker([sys.executable, str(script), str(out), ",".join(MODES)], cwd=out, timeout=HANG_GUARD_S)
    return out


def _load(out: Path, name: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(out / f"{name}_rank{rank}.pt", weights_only=True) for rank in range(2)]


def _info(out: Path, mode: str) -> dict[str, Any]:
    return json.loads((out / f"{mode}_rank0.json").read_text())


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_16_bit_weights_with_float32_norms(fsdp_precision_run: Path, mode: str) -> None:
    info = _info(fsdp_precision_run, mode)
    assert info["world_size"] == 2
    assert info["params"]["proj.weight"] == ["DTensor", "torch.bfloat16"]
    assert info["params"]["norm.weight"] == ["DTensor", "torch.float32"]  # its own float32 FSDP policy
    assert info["norm_input"] == "torch.float32" and info["norm_output"] == "torch.bfloat16"
    assert info["grads"]["proj.weight"] == "torch.bfloat16" and info["grads"]["norm.weight"] == "torch.float32"
    if mode == "fp32":  # the optimizer steps float32 shards of the masters and keeps float32 state
        assert info["stepped"] == ["torch.float32"] and info["state"] == ["torch.float32"]
    else:  # the model's own shards, with 16-bit state (float32 for the float32 norm)
        assert info["stepped"] == ["torch.bfloat16", "torch.float32"]
        assert info["state"] == ["torch.bfloat16", "torch.float32"]


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", MODES)
def test_ranks_agree_and_train(fsdp_precision_run: Path, mode: str) -> None:
    state0, state1 = _load(fsdp_precision_run, mode)
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
        assert torch.isfinite(state0[key].float()).all(), key
    torch.manual_seed(0)
    initial = torch.nn.Linear(8, 16)
    assert not torch.equal(state0["proj.weight"].float(), initial.weight.bfloat16().float())


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_resume_is_exact(fsdp_precision_run: Path, mode: str) -> None:
    """The masters, compensation buffers and rounding generators are saved per rank with the shards."""
    uninterrupted = _load(fsdp_precision_run, mode)
    resumed = _load(fsdp_precision_run, f"{mode}_resumed")
    for rank in range(2):
        for key, value in uninterrupted[rank].items():
            assert torch.equal(value, resumed[rank][key]), (rank, key)


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", MODES)
def test_a_single_process_checkpoint_resumes_under_fsdp(fsdp_precision_run: Path, mode: str) -> None:
    """The full float32 copies / compensation of one process go into each rank's shard of them."""
    from_single = _load(fsdp_precision_run, f"{mode}_from_single")
    trainer, model = _model()["fit"](mode, 2, ckpt_path=fsdp_precision_run / f"{mode}_single_epoch1.ckpt",
                                      strategy="auto")  # fmt: skip
    assert trainer.global_step == 16
    for key, value in model.state_dict().items():
        assert torch.equal(from_single[0][key], from_single[1][key]), key
        # 2 ranks reduce bfloat16 gradients where one process computes them on the global batch.
        torch.testing.assert_close(from_single[0][key].float(), value.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", MODES)
def test_an_exported_sharded_checkpoint_resumes_in_one_process(
    fsdp_precision_run: Path, tmp_path: Path, mode: str
) -> None:
    """export_full_checkpoint rebuilds the float32 copies / compensation from every rank's shard."""
    from prec.checkpoint.sharded import export_full_checkpoint

    exported = tmp_path / "full.ckpt"
    export_full_checkpoint(fsdp_precision_run / f"{mode}_epoch1.ckpt", exported)
    checkpoint = torch.load(exported, weights_only=True)
    state = next(value for key, value in checkpoint.items() if isinstance(value, dict) and "master_weights" in value)
    key = {"fp32": "masters", "kahan": "compensation"}.get(mode)
    if key is not None:  # full tensors, shaped like the model's parameters
        shapes = [tuple(t.shape) for t in state[key][0]]
        net = _model()["Net"]()
        assert shapes == [tuple(p.shape) for n, p in net.named_parameters() if not n.startswith("norm.")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", prec.PrecWarning)  # same mode: loads without a conversion warning
        trainer, model = _model()["fit"](mode, 2, ckpt_path=exported, strategy="auto")
    assert trainer.global_step == 16
    uninterrupted = _load(fsdp_precision_run, mode)[0]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value.float(), uninterrupted[name].float(), rtol=3e-2, atol=3e-2)


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
def test_ddp_replicas_round_alike(fsdp_precision_run: Path, mode: str) -> None:
    """Every rank's rounding generator starts from the same seed, whatever the rank's own torch seed, and sees the
    same values: the replicas stay bit-identical through stochastic rounding and train as one process does on the
    global batch."""
    replicas = _load(fsdp_precision_run, f"{mode}_ddp")
    _, model = _model()["fit"](mode, 2, strategy="auto")
    for key, value in model.state_dict().items():
        assert torch.equal(replicas[0][key], replicas[1][key]), key
        torch.testing.assert_close(replicas[0][key].float(), value.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_a_sharded_checkpoint_resumes_at_another_world_size(fsdp_precision_run: Path, tmp_path: Path) -> None:
    """Written by 2 ranks, resumed by 1 under fsdp: the float32 copies / compensation are rebuilt from both ranks'
    shards (the model and optimizer reshard through torch.distributed.checkpoint)."""
    script = tmp_path / "one_rank.py"
    script.write_text(
        MODEL
        + textwrap.dedent(
            """
            out = Path(sys.argv[1])
            for mode in sys.argv[2].split(","):
                trainer, model = fit(mode, 2, ckpt_path=out / f"{mode}_epoch1.ckpt", strategy="fsdp", devices=1)
                assert trainer.world_size == 1 and trainer.global_step == 16, trainer.global_step
                torch.save(trainer.strategy.module_state_dict(model), out / f"{mode}_one_rank.pt")
            """
        )
    )
    command = [sys.executable, str(script), str(fsdp_precision_run), ",".join(MODES)]
    sibling("test_distributed_ddp.py").run_worker(command, cwd=tmp_path, timeout=HANG_GUARD_S)
    for mode in MODES:
        resumed = torch.load(fsdp_precision_run / f"{mode}_one_rank.pt", weights_only=True)
        uninterrupted = _load(fsdp_precision_run, mode)[0]
        for key, value in uninterrupted.items():
            # One rank on the global batch after the resume, two before: bfloat16 reductions differ.
            torch.testing.assert_close(resumed[key].float(), value.float(), rtol=3e-2, atol=3e-2)
