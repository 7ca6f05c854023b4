"""FSDP2 (``fully_shard``) for real on two CPU processes with gloo, plus the CUDA check for a GPU machine.

torch 2.13's FSDP2 runs on CPU with gloo (mixed-precision policies and the sharded grad scaler included), so
the same worker as the DDP tests runs the FSDP scenarios here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _modules import sibling

pytestmark = pytest.mark.slow


ddp = sibling("test_distributed_ddp.py")  # its worker script and single-process helpers


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    trainer, _ = ddp.single_process(max_epochs=1)
    trainer.save_checkpoint(out / "single.ckpt")
    script = out / "worker.py"
    script.write_text(ddp.WORKER)
    scenarios = "fsdp32,fsdpbf16,fsdpbf16true,fsdp16"
    ddp.run_worker([sys.executable, str(script), str(out), scenarios, str(out / "single.ckpt")], cwd=out)
    return out


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
@pytest.mark.parametrize(
    ("name", "precision", "tolerance", "policy"),
    [
        ("fsdp32", "32-true", 1e-6, "param_dtype=None, reduce_dtype=None"),
        ("fsdpbf16", "bf16-mixed", 3e-2, "param_dtype=torch.bfloat16, reduce_dtype=torch.float32"),
    ],
)
def test_fsdp_fit_matches_single_process(
    fsdp_run: Path, name: str, precision: str, tolerance: float, policy: str
) -> None:
    (info0, state0), (info1, state1) = ddp.results(fsdp_run, name)
    assert info0["world_size"] == info1["world_size"] == 2
    assert policy in info0["mp_policy"]
    # The user's module holds DTensor shards in float32 (the policy casts only for compute).
    assert info0["params"]["layer.weight"] == ["DTensor", "torch.float32"]
    assert_full = ddp.assert_same_state
    assert_full(state0, state1, rtol=0, atol=0)  # module_state_dict gathers the same full tensors on each rank
    assert state0["layer.weight"].shape == (1, ddp.FEATURES)
    _, trained = ddp.single_process(precision)
    assert_full(state0, trained.state_dict(), rtol=tolerance, atol=tolerance)


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_fsdp_checkpoint_holds_full_weights_for_one_process(fsdp_run: Path, tmp_path: Path) -> None:
    """Saved under FSDP (sharded with torch.distributed.checkpoint: no rank gathers the model), exported to one
    file offline, resumed by a single process."""
    from prec.checkpoint.sharded import export_full_checkpoint, is_sharded_checkpoint

    (_, state0), _ = ddp.results(fsdp_run, "fsdp32")
    assert is_sharded_checkpoint(fsdp_run / "fsdp.ckpt")
    export_full_checkpoint(fsdp_run / "fsdp.ckpt", tmp_path / "full.ckpt")
    checkpoint = torch.load(tmp_path / "full.ckpt", weights_only=True)
    ddp.assert_same_state(checkpoint["state_dict"], state0, rtol=0, atol=0)
    trainer, resumed = ddp.single_process(max_epochs=2, ckpt_path=tmp_path / "full.ckpt")
    assert trainer.global_step == 8
    ddp.assert_same_state(resumed.state_dict(), state0, rtol=0, atol=0)


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_validate_after_fit_reuses_the_shards(fsdp_run: Path) -> None:
    (info0, _), (info1, _) = ddp.results(fsdp_run, "fsdp32")
    assert info0["validate"]["val_loss"] > 0 and info1["validate"]["val_loss"] > 0


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_full_state_dict_loads_into_the_shards(fsdp_run: Path) -> None:
    """FSDPStrategy.load_module_state_dict scatters a single process's full state into the DTensor shards."""
    single = torch.load(fsdp_run / "single.ckpt", weights_only=True)["state_dict"]
    for rank in range(2):
        loaded = torch.load(fsdp_run / f"fsdp32_loaded_rank{rank}.pt")
        ddp.assert_same_state(loaded, single, rtol=0, atol=0)


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_fsdp_true_precision_shards_in_that_dtype(fsdp_run: Path) -> None:
    (info0, state0), (_, state1) = ddp.results(fsdp_run, "fsdpbf16true")
    assert info0["params"]["layer.weight"] == ["DTensor", "torch.bfloat16"]
    assert state0["layer.weight"].dtype == torch.bfloat16
    ddp.assert_same_state(state0, state1, rtol=0, atol=0)
    _, trained = ddp.single_process("bf16-true")
    ddp.assert_same_state(state0, trained.state_dict(), rtol=3e-2, atol=3e-2)


@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_fsdp_16_mixed_scaler_skips_on_every_rank(fsdp_run: Path) -> None:
    """Each rank sees only its gradient shard; the sharded scaler's all-reduced inf check makes both skip."""
    (info0, state0), (info1, state1) = ddp.results(fsdp_run, "fsdp16")
    assert "param_dtype=torch.float16, reduce_dtype=torch.float32" in info0["mp_policy"]
    assert info0["record"] == info1["record"]
    assert [entry["step"] for entry in info0["record"] if entry["skipped"]] == [3]
    assert info0["record"][-1]["scale"] == 2.0**9
    ddp.assert_same_state(state0, state1, rtol=0, atol=0)
    assert all(torch.isfinite(value).all() for value in state0.values())


@pytest.mark.cuda
@pytest.mark.timeout(ddp.PROCESS_TIMEOUT_S + 60)
def test_fsdp_bf16_mixed_on_one_gpu(tmp_path: Path) -> None:
    """FSDP2 with nccl on a real GPU (world size 1 through torchrun: this checks the nccl path and the
    policy on CUDA; CI has no GPU)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("prec_cuda", reason="the cuda accelerator comes from prec-cuda")
    script = tmp_path / "gpu_worker.py"
    script.write_text(ddp.WORKER.replace('accelerator="cpu"', 'accelerator="cuda"').replace("devices=2", "devices=1"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone"]
    ddp.run_worker([*command, str(script), str(tmp_path), "fsdpbf16"], cwd=tmp_path)
    info = json.loads((tmp_path / "fsdpbf16_rank0.json").read_text())
    assert info["params"]["layer.weight"] == ["DTensor", "torch.float32"]
