"""FSDP2 sharded checkpoints (torch.distributed.checkpoint) and the gradient-sync context, on 2 gloo processes.

The test starts the two ranks itself (as srun or torchrun would: RANK, WORLD_SIZE, MASTER_ADDR/PORT); one launch
runs every scenario, each rank writes what it saw, and the assertions run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prec.checkpoint.sharded import export_full_checkpoint, is_sharded_checkpoint

pytestmark = pytest.mark.slow

HANG_GUARD_S = 300  # the launch takes about 15 s here

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.fsdp import fully_shard

    import prec
    from prec.checkpoint.sharded import load_sharded, save_sharded

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inner = torch.nn.Linear(8, 16)
            self.drop = torch.nn.Dropout(0.25)
            self.outer = torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.outer(self.drop(torch.relu(self.inner(x))))

        def training_step(self, x, y):
            return torch.nn.functional.mse_loss(self(x), y)


    def batch(step):
        generator = torch.Generator().manual_seed(100 * step + rank)  # each rank its own data
        x = torch.randn(4, 8, generator=generator)
        return x, x.sum(1, keepdim=True)


    def sharded():
        model = Net()
        fully_shard(model.inner)
        fully_shard(model.outer)
        fully_shard(model)
        return model, torch.optim.Adam(model.parameters(), lr=0.01)


    def train(model, optimizer, steps):
        for step in steps:
            x, y = batch(step)
            model.training_step(x, y).backward()
            optimizer.step()
            optimizer.zero_grad()


    def full(model):
        return {k: v.full_tensor() for k, v in model.state_dict().items()}


    def save_full(model, name):
        state = full(model)
        if rank == 0:
            torch.save(state, out / name)


    # One process group for every scenario: the strategy joins it (prec's bounded rendezvous).
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, enable_progress_bar=False, logger=False)
    strategy = trainer.strategy
    strategy.setup_environment()

    # -- resume: save after 3 steps, load into a fresh model, 3 more steps == 6 straight steps ---------------------
    torch.manual_seed(1234 + rank)
    model, optimizer = sharded()
    train(model, optimizer, range(6))
    save_full(model, "straight.pt")

    torch.manual_seed(1234 + rank)
    model, optimizer = sharded()
    train(model, optimizer, range(3))
    path = out / "sharded"
    save_sharded(path, model, [optimizer], {"rng": torch.get_rng_state(), "loops": {"global_step": 3}, "rank": rank})
    save_full(model, "at_save.pt")
    del model, optimizer
    torch.manual_seed(99)  # the resumed run must not depend on this process's RNG, only on the checkpoint's
    fresh, fresh_optimizer = sharded()
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.fill_(0.5)  # and not on its own initial weights
    state = load_sharded(path, fresh, [fresh_optimizer])
    torch.set_rng_state(state["rng"])
    train(fresh, fresh_optimizer, range(3, 6))
    save_full(fresh, "resumed.pt")
    (out / f"state_rank{rank}.json").write_text(json.dumps({"rank": state["rank"], "loops": state["loops"]}))
    # The shards on this rank are only its part of each parameter.
    local = {k: list(v.to_local().shape) for k, v in fresh.state_dict().items()}
    (out / f"shards_rank{rank}.json").write_text(json.dumps(local))

    # -- a save killed after its files were written, before the swap: the previous checkpoint stays -------------
    if rank == 0:
        import prec.checkpoint.sharded as sharded_checkpoint

        def killed(staging, target):
            os._exit(9)

        sharded_checkpoint._swap_in = killed  # the worst moment: every file written, nothing renamed
    model, optimizer = sharded()
    train(model, optimizer, range(1))
    save_sharded(path, model, [optimizer], {"rank": rank})  # rank 0 dies in here; rank 1 at the next barrier
    """
)

SYNC_WORKER = textwrap.dedent(
    '''
    import json, os, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    import prec

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    MICRO, STEPS = 4, 2


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, x, y):
            return torch.nn.functional.mse_loss(self.layer(x), y) / MICRO


    def batch(step, micro):
        generator = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
        x = torch.randn(4, 8, generator=generator)
        return x, x.sum(1, keepdim=True)


    def accumulate(strategy, wrapped, use_context):
        """STEPS optimizer steps of MICRO micro-batches; the first MICRO-1 under the context when asked."""
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        for step in range(STEPS):
            for micro in range(MICRO):
                x, y = batch(step, micro)
                inside = use_context and micro < MICRO - 1
                context = strategy.no_gradient_sync(wrapped) if inside else _nothing()
                with context:  # forward and backward both inside, as DDP requires
                    wrapped("training_step", x, y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return {k: v.detach().clone() for k, v in prec.strategies.ddp.unwrap(wrapped).state_dict().items()}


    import contextlib
    _nothing = contextlib.nullcontext
    result = {}
    for name in ("ddp", "fsdp"):
        trainer = prec.Trainer(accelerator="cpu", strategy=name, devices=2, enable_progress_bar=False, logger=False)
        strategy = trainer.strategy
        strategy.setup_environment()
        for use_context in (False, True):
            counts = {"all_reduce": 0, "reduce_scatter": 0}
            wrapped = strategy.setup_module(Net())
            if name == "ddp":
                def hook(state, bucket):
                    counts["all_reduce"] += 1  # DDP calls its comm hook once per bucket it all-reduces
                    return default_hooks.allreduce_hook(state, bucket)
                wrapped.register_comm_hook(None, hook)
                weights = accumulate(strategy, wrapped, use_context)
            else:
                original = dist.reduce_scatter_single  # FSDP2 reduce-scatters gradients through this function

                def counting(*args, **kwargs):
                    counts["reduce_scatter"] += 1
                    return original(*args, **kwargs)

                dist.reduce_scatter_single = counting
                try:
                    weights = accumulate(strategy, wrapped, use_context)
                finally:
                    dist.reduce_scatter_single = original
                weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in weights.items()}
            torch.save(weights, out / f"{name}_{use_context}_rank{rank}.pt")
            result[f"{name}_{use_context}"] = counts
    (out / f"counts_rank{rank}.json").write_text(json.dumps(result))
    '''
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_two(script: Path, out: Path, extra_env: dict[str, str] | None = None) -> list[subprocess.Popen[str]]:
    """Start ranks 0 and 1 of a 2-process job the way a cluster launcher does."""
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore",
            "PREC_RENDEZVOUS_TIMEOUT": "60",
            **(extra_env or {}),
        }
        processes.append(
            subprocess.Popen(  # noqa: S603 - the test's own worker
                [sys.executable, str(script), str(out)],
                cwd=out,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return processes


def finish(processes: list[subprocess.Popen[str]], timeout: float = HANG_GUARD_S) -> list[tuple[int, str]]:
    """Each process's exit code and stderr; a hang past the guard kills them and fails the test."""
    results = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=timeout)
            results.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded")
    script = out / "worker.py"
    script.write_text(WORKER)
    try:
        (code0, err0), (code1, err1) = finish(launch_two(script, out))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run hung for {HANG_GUARD_S} s")
    assert code0 == 9, err0  # killed on purpose in its last save
    assert code1 != 0  # rank 1 lost rank 0 at the save's barrier
    return out


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_resume_from_sharded_checkpoint_is_exact(sharded_run: Path) -> None:
    straight = torch.load(sharded_run / "straight.pt")
    resumed = torch.load(sharded_run / "resumed.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    for rank in range(2):
        state = json.loads((sharded_run / f"state_rank{rank}.json").read_text())
        assert state == {"rank": rank, "loops": {"global_step": 3}}  # each rank its own state back
    shards = json.loads((sharded_run / "shards_rank0.json").read_text())
    assert shards["inner.weight"] == [8, 8]  # half of the (16, 8) weight: sharded, never gathered by the load


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_killed_save_keeps_the_previous_checkpoint(sharded_run: Path, tmp_path: Path) -> None:
    path = sharded_run / "sharded"
    assert is_sharded_checkpoint(path)
    assert list(sharded_run.glob(".sharded.tmp-*"))  # the killed save's files, not swapped in
    export_full_checkpoint(path, tmp_path / "full.ckpt")  # one process, no process group
    exported = torch.load(tmp_path / "full.ckpt", weights_only=True)
    at_save = torch.load(sharded_run / "at_save.pt")
    for key, value in at_save.items():
        assert torch.equal(exported["state_dict"][key], value), key
    assert exported["loops"] == {"global_step": 3}
    adam = exported["optimizer_states"][0]
    assert sorted(adam["state"]) == [0, 1, 2, 3]  # indexed as a one-process Adam numbers its parameters
    assert adam["state"][0]["exp_avg"].shape == (16, 8)


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_a_damaged_shard_is_refused(sharded_run: Path, tmp_path: Path) -> None:
    import shutil

    from prec.errors import CheckpointError

    copy = tmp_path / "copy"
    shutil.copytree(sharded_run / "sharded", copy)
    shard = next(copy.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt: __\d_\d\.distcp does not match its xxh3_128"):
        export_full_checkpoint(copy, tmp_path / "full.ckpt")


@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_one_gradient_sync_per_optimizer_step(tmp_path: Path) -> None:
    """4 micro-batches per step, the first 3 under Strategy.no_gradient_sync: DDP all-reduces once per step
    (counted by a comm hook), FSDP2 reduce-scatters once per sharded unit per step; without it, 4 times."""
    script = tmp_path / "sync.py"
    script.write_text(SYNC_WORKER)
    try:
        results = finish(launch_two(script, tmp_path))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run hung for {HANG_GUARD_S} s")
    for code, stderr in results:
        assert code == 0, stderr
    for rank in range(2):
        counts = json.loads((tmp_path / f"counts_rank{rank}.json").read_text())
        assert counts["ddp_False"]["all_reduce"] == 4 * 2  # every micro-batch, 2 steps
        assert counts["ddp_True"]["all_reduce"] == 2  # once per optimizer step
        assert counts["fsdp_False"]["reduce_scatter"] == 4 * 2
        assert counts["fsdp_True"]["reduce_scatter"] == 2
    for name in ("ddp", "fsdp"):
        synced = torch.load(tmp_path / f"{name}_False_rank0.pt")
        local = torch.load(tmp_path / f"{name}_True_rank0.pt")
        other = torch.load(tmp_path / f"{name}_True_rank1.pt")
        for key in synced:  # the same update (sum of reductions vs reduction of sums: rounding only)
            torch.testing.assert_close(local[key], synced[key], rtol=1e-6, atol=1e-7)
            assert torch.equal(local[key], other[key])
