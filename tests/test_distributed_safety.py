"""A DDP job ends with a clear error in bounded time: a taken rendezvous port, a rank that fails; SLURM tasks.

Every process is started for real (2 gloo processes) and bounded by a hang guard far above need: before the
bounded rendezvous, a rank that reached a taken port waited for the 30-minute store timeout.
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

from prec.cluster.detection import first_host, slurm_port, slurm_variables
from prec.errors import ConfigurationError

HANG_GUARD_S = 180
RENDEZVOUS_S = 10  # the bound under test: PREC_RENDEZVOUS_TIMEOUT in these jobs
LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec

    out, mode = Path(sys.argv[1]), sys.argv[2]


    class Regression(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if mode == "rank1_fails" and self.trainer.global_rank == 1 and batch_idx == 2:
                raise ValueError("rank 1 broke at batch 2")
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    if __name__ == "__main__":
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(16, 4, generator=generator)
        loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)
        trainer = prec.Trainer(
            accelerator="cpu", strategy="ddp", devices=2, max_epochs=1, enable_progress_bar=False, logger=False
        )
        model = Regression()
        trainer.fit(model, loader)
        state = {k: v.tolist() for k, v in model.state_dict().items()}
        info = {"world_size": trainer.world_size, "cluster": trainer.strategy.cluster, "state": state}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
    """
)


def clean_env(rendezvous_s: float = HANG_GUARD_S / 2, **extra: str) -> dict[str, str]:
    """This environment without launcher variables; the rendezvous bound is short only where it is under test
    (a busy machine may take long to start the other rank)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PREC_RENDEZVOUS_TIMEOUT": str(rendezvous_s),
            **extra}  # fmt: skip


def run(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> tuple[list[tuple[int, str]], float]:
    """Start the processes, wait for all (killing any left at the hang guard); exit codes, stderr, seconds."""
    start = time.monotonic()
    processes = [
        subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
        for command, env in commands
    ]
    results = []
    try:
        for process in processes:
            try:
                _, stderr = process.communicate(timeout=HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a rank still ran {HANG_GUARD_S} s after the start: it hangs")
            results.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results, time.monotonic() - start


@pytest.fixture
def taken_port() -> object:
    """A port held by another program that accepts connections and never answers."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(16)
        yield holder.getsockname()[1]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def rank_env(rank: int, port: int, **extra: str) -> dict[str, str]:
    return clean_env(
        RENDEZVOUS_S, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **extra,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_taken_port_ends_every_rank_with_a_clear_error(tmp_path: Path, script: Path, taken_port: int) -> None:
    """Both ranks started by a launcher (as srun does) at a port another program holds."""
    command = [sys.executable, str(script), str(tmp_path), "fit"]
    (result0, result1), seconds = run(
        [(command, rank_env(0, taken_port)), (command, rank_env(1, taken_port))], tmp_path
    )
    assert result0[0] != 0 and result1[0] != 0
    assert f"RendezvousError: rank 0 cannot host the job's rendezvous on 127.0.0.1:{taken_port}" in result0[1]
    assert f"port {taken_port} is already in use by another program" in result0[1]
    assert (
        f"RendezvousError: rank 1 of 2 could not reach the job's rendezvous at 127.0.0.1:{taken_port} within the"
        f" rendezvous timeout of {RENDEZVOUS_S} s" in result1[1]
    )
    assert "is another program using that port?" in result1[1]
    print(f"both ranks ended after {seconds:.1f} s (rendezvous timeout {RENDEZVOUS_S} s)")


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_taken_port_in_a_plain_script_launch(tmp_path: Path, script: Path, taken_port: int) -> None:
    """prec starts rank 1 itself, on the MASTER_PORT the user chose: rank 0 fails at once and stops rank 1,
    which is not reported as a failure of its own ("status -15")."""
    command = [sys.executable, str(script), str(tmp_path), "fit"]
    ((code, stderr),), _ = run([(command, clean_env(RENDEZVOUS_S, MASTER_PORT=str(taken_port)))], tmp_path)
    assert code != 0
    assert f"port {taken_port} is already in use by another program" in stderr
    assert "status -15" not in stderr and "exited with status" not in stderr, stderr


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_the_failing_ranks_own_error_is_named(tmp_path: Path, script: Path) -> None:
    command = [sys.executable, str(script), str(tmp_path), "rank1_fails"]
    ((code, stderr),), _ = run([(command, clean_env())], tmp_path)
    assert code != 0
    assert "prec: rank 1 failed: ValueError: rank 1 broke at batch 2" in stderr, stderr
    assert "status -15" not in stderr, stderr


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S + 60)
def test_slurm_tasks_form_one_job(tmp_path: Path, script: Path) -> None:
    """Two tasks described only by SLURM's variables, as srun --ntasks-per-node 2 sets them; the port comes
    from the job id (15000 + its last four digits)."""
    port = next(p for p in range(15000 + os.getpid() % 9000, 25000) if _free(p))
    job_id = f"77{port - 15000:04d}"
    commands = []
    for rank in range(2):
        env = clean_env(
            SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1",
            SLURM_NODELIST="localhost", SLURM_JOB_ID=job_id, SLURM_JOB_NAME="train",
        )  # fmt: skip
        commands.append(([sys.executable, str(script), str(tmp_path), "fit"], env))
    results, _ = run(commands, tmp_path)
    for code, stderr in results:
        assert code == 0, stderr
    infos = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [info["world_size"] for info in infos] == [2, 2]
    assert [info["cluster"] for info in infos] == ["slurm", "slurm"]
    assert infos[0]["state"] == infos[1]["state"]  # one job: all-reduced gradients, identical replicas


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- SLURM variables, without processes -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node[003-005,9],gpu1", "node003"), ("gpu7", "gpu7"), ("a[7]", "a7"), ("host1,host2", "host1"),
     ("n[01-02] m3", "n01")],
)  # fmt: skip
def test_first_host_of_a_node_list(nodelist: str, first: str) -> None:
    assert first_host(nodelist) == first


def test_slurm_variables_as_lightning_reads_them() -> None:
    environ = {
        "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURM_NNODES": "4",
        "SLURM_NODELIST": "gpu[12-15]", "SLURM_JOB_ID": "4711234",
    }  # fmt: skip
    variables = slurm_variables(environ)
    assert variables["RANK"] == "5" and variables["WORLD_SIZE"] == "8" and variables["LOCAL_RANK"] == "1"
    assert variables["NODE_RANK"] == "2" and variables["LOCAL_WORLD_SIZE"] == "2"
    assert variables["MASTER_ADDR"] == "gpu12"
    assert variables["MASTER_PORT"] == str(15000 + 1234) == str(slurm_port("4711234"))
    assert slurm_variables({**environ, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"


def test_slurm_task_count_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    import prec

    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=r"SLURM_NTASKS=3 tasks, but the Trainer wants .* = 2 processes"):
        prec.Trainer(accelerator="cpu", strategy="ddp", devices=2)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive shell in an allocation: not SLURM's job
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2)
    assert trainer.strategy.cluster is None and trainer.world_size == 2
