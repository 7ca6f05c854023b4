"""Two nodes x two processes on this machine: two torchrun launches (--nnodes 2 --node-rank 0/1) meeting at
127.0.0.1, training to exactly the weights of one process.

Exactness by construction: an L1 loss on a linear model whose inputs are small integers, weights and learning
rate dyadic, and batches of 2 per rank: every gradient is a sum of +-1 times small integers divided by a power
of two, so every sum (per rank, across the 4 ranks, or over the global batch of 8 in one process) is exact in
float32 whatever the order. A wrong data split (ranks seeing the wrong samples) changes the signs, so the
weights would differ.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import prec

pytestmark = pytest.mark.slow
HANG_GUARD_S = 400

MODEL = textwrap.dedent(
    """
    import torch
    import prec

    SAMPLES, FEATURES = 64, 4


    def dataset():
        generator = torch.Generator().manual_seed(3)
        x = torch.randint(-3, 4, (SAMPLES, FEATURES), generator=generator).float()
        y = torch.randint(-8, 9, (SAMPLES, 1), generator=generator).float()
        return torch.utils.data.TensorDataset(x, y)


    class L1(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(FEATURES, 1)
            with torch.no_grad():
                self.layer.weight.copy_(torch.tensor([[0.25, -0.5, 0.75, 1.0]]))
                self.layer.bias.fill_(0.125)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self.layer(x) - y).abs().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=2.0**-5)
    """
)

WORKER = MODEL + textwrap.dedent(
    """

    if __name__ == "__main__":
        import json, os, sys
        from pathlib import Path

        out = Path(sys.argv[1])
        trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, num_nodes=2, max_epochs=2,
                               enable_progress_bar=False, logger=False)
        model = L1()
        trainer.fit(model, torch.utils.data.DataLoader(dataset(), batch_size=2))
        info = {"rank": trainer.global_rank, "world": trainer.world_size, "node": trainer.strategy.node_rank,
                "steps": trainer.global_step, "state": {k: v.tolist() for k, v in model.state_dict().items()}}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
    """
)


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _launch_two_nodes(script: Path, out: Path) -> list[tuple[int, str]]:
    """Start both torchrun "nodes" and wait for them: ``(exit status, stderr)`` per node. When one fails, the
    other is stopped at once (it would wait for its peer until torchrun's own timeout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    port = _free_port()
    logs = [out / f"node{node}.err" for node in range(2)]
    nodes = []
    for node, log in enumerate(logs):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
            "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", port, str(script), str(out),
        ]  # fmt: skip
        with log.open("w") as stderr:
            nodes.append(subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=stderr))
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while any(node.poll() is None for node in nodes):
            if any(node.poll() not in (None, 0) for node in nodes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
            node.wait()
    if time.monotonic() > deadline:
        pytest.fail(f"the 2-node run hung for {HANG_GUARD_S} s: {logs[0].read_text()[-2000:]}")
    return [(node.returncode, log.read_text()) for node, log in zip(nodes, logs, strict=True)]


@pytest.mark.timeout(3 * HANG_GUARD_S + 60)
def test_two_nodes_of_two_processes_train_like_one(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start = time.monotonic()
    for _ in range(3):  # the free port this test picked can be taken by another process before torchrun binds it
        results = _launch_two_nodes(script, tmp_path)
        if not any("address already in use" in stderr.lower() for _, stderr in results):
            break
    for code, stderr in results:
        assert code == 0, stderr[-4000:]
    print(f"2 nodes x 2 processes: {time.monotonic() - start:.1f} s")
    infos = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(4)]
    assert [(i["world"], i["node"]) for i in infos] == [(4, 0), (4, 0), (4, 1), (4, 1)]
    namespace: dict[str, object] = {}
    exec(MODEL, namespace)  # noqa: S102 - the worker's own model and data, for the one-process reference
    model = namespace["L1"]()  # type: ignore[operator]
    trainer = prec.Trainer(accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, logger=False)
    trainer.fit(model, DataLoader(namespace["dataset"](), batch_size=8))  # type: ignore[operator]
    assert all(info["steps"] == trainer.global_step == 16 for info in infos)
    for key, value in model.state_dict().items():
        for info in infos:
            assert torch.equal(torch.tensor(info["state"][key]), value), (key, info["rank"])
    assert not torch.equal(model.layer.weight, torch.tensor([[0.25, -0.5, 0.75, 1.0]]))
