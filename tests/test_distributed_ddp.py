"""DDP for real: two CPU processes on gloo, started by prec itself and by torchrun.

Each launch runs several scenarios in one process group (starting Python with torch costs seconds on a busy
machine), each rank writes what it saw to files, and the tests below compare them with single-process runs
done here in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prec

pytestmark = pytest.mark.slow

PROCESS_TIMEOUT_S = 240
DDP_SCENARIOS = "ddp32,ddpbf16,scaler_forward,scaler_after_reduce,plain_forward,plain_after_reduce,ckpt_resume"
SAMPLES, FEATURES, PER_RANK_BATCH, WORLD = 32, 8, 4, 2

WORKER = textwrap.dedent(
    '''
    """Runs the scenarios named on the command line under strategy="ddp" on 2 CPU processes."""
    import functools, json, os, sys, time
    from datetime import timedelta
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import prec
    from prec.distributed import DDPStrategy

    SAMPLES, FEATURES, BATCH = 32, 8, 4


    def data():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(SAMPLES, FEATURES, generator=generator)
        y = x @ torch.randn(FEATURES, 1, generator=generator)
        return TensorDataset(x, y)


    class Regression(prec.TrainingModule):
        def __init__(self, inject=None):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(FEATURES, 1)
            self.inject = inject or {}
            self.record = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x).float(), y)
            if self._injects("forward"):
                loss = loss * float("inf")  # before DDP's all-reduce: this rank's gradients become inf/NaN
            if self._injects("hang"):
                time.sleep(3600)  # alive and silent: rank 0 waits for this rank's gradients in the all-reduce
            self.log("train_loss", loss)
            return loss

        def _injects(self, where):
            trainer = self.trainer
            return (
                self.inject.get("where") == where
                and trainer.global_rank == self.inject["rank"]
                and trainer.global_step == self.inject["step"]
            )

        def on_after_backward(self):
            if self._injects("after_reduce"):  # after DDP's all-reduce: only this rank's gradient is inf
                self.layer.weight.grad.fill_(float("inf"))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            precision = self.trainer.precision_plugin
            scaler = getattr(precision, "scaler", None)
            self.record.append(
                {
                    "step": self.trainer.global_step,
                    "skipped": precision.step_skipped,
                    "scale": None if scaler is None else float(scaler.get_scale()),
                }
            )

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x).float(), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)


    class QuickTimeout:
        @prec.hookimpl
        def prec_register_strategies(self, register):
            register("ddp_quick_timeout", functools.partial(DDPStrategy, timeout=timedelta(seconds=10)))


    def run(out, name, strategy="ddp", **options):
        plain_scaler = options.pop("plain_scaler", False)
        if plain_scaler:  # observe torch's own GradScaler under DDP, without prec's synchronised one
            from prec.strategies.ddp import DDPStrategy

            synchronise, DDPStrategy._synchronise_scaler = DDPStrategy._synchronise_scaler, lambda self: None
        inject = options.pop("inject", None)
        ckpt = options.pop("ckpt_path", None)
        save = options.pop("save", None)
        load = options.pop("load", None)
        options.setdefault("max_epochs", 2)
        model = Regression(inject)
        trainer = prec.Trainer(
            accelerator="cpu", strategy=strategy, devices=2, enable_progress_bar=False,
            default_root_dir=out, enable_checkpointing=False, log_every_n_steps=1, **options,
        )
        loader = DataLoader(data(), batch_size=BATCH)
        trainer.fit(model, loader, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        rank = trainer.global_rank
        state = trainer.strategy.module_state_dict(model)
        torch.save(state, out / f"{name}_rank{rank}.pt")
        if load:  # a full state dict into the set-up (wrapped or sharded) model, as a resume does
            trainer.strategy.load_module_state_dict(model, torch.load(load, weights_only=True)["state_dict"])
            torch.save(trainer.strategy.module_state_dict(model), out / f"{name}_loaded_rank{rank}.pt")
        info = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "record": model.record,
            "skipped_steps": trainer.precision_plugin.skipped_steps,
            "pid": os.getpid(),
            "params": {n: [type(p).__name__, str(p.dtype)] for n, p in model.named_parameters()},
            "mp_policy": str(getattr(trainer.strategy, "mp_policy", None)),
            "launched_by": "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "prec",
        }
        if name in ("ddp32", "fsdp32"):
            (info["validate"],) = trainer.validate(model, DataLoader(data(), batch_size=BATCH))
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(info))
        if plain_scaler:
            DDPStrategy._synchronise_scaler = synchronise


    def main():
        out = Path(sys.argv[1])
        scenarios = sys.argv[2].split(",")
        single_ckpt = sys.argv[3] if len(sys.argv) > 3 else None
        half = prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)
        table = {
            "ddp32": dict(precision="32-true"),
            "ddpbf16": dict(precision="bf16-mixed"),
            "scaler_forward": dict(
                plugins=[half], inject={"where": "forward", "rank": 1, "step": 2}, save=str(out / "ddp.ckpt")
            ),
            "scaler_after_reduce": dict(
                plugins=[prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)],
                inject={"where": "after_reduce", "rank": 1, "step": 3},
            ),
            "plain_forward": dict(
                plugins=[prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)],
                inject={"where": "forward", "rank": 1, "step": 2},
                plain_scaler=True,
            ),
            "plain_after_reduce": dict(
                plugins=[prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)],
                inject={"where": "after_reduce", "rank": 1, "step": 3},
                plain_scaler=True,
            ),
            "ckpt_resume": dict(precision="32-true", max_epochs=3, ckpt_path=single_ckpt),
            "hang_rank1": dict(
                strategy="ddp_quick_timeout",
                precision="32-true",
                inject={"where": "hang", "rank": 1, "step": 2},
            ),
            "fsdp32": dict(strategy="fsdp", precision="32-true", save=str(out / "fsdp.ckpt"), load=single_ckpt),
            "fsdpbf16": dict(strategy="fsdp", precision="bf16-mixed"),
            "fsdpbf16true": dict(strategy="fsdp", precision="bf16-true"),
            "fsdp16": dict(
                strategy="fsdp",
                plugins=[prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)],
                inject={"where": "forward", "rank": 1, "step": 2},
            ),
        }
        for name in scenarios:
            if name == "hang_rank1":  # a collective gives up after 10 s instead of 30 minutes
                prec.register_plugin(QuickTimeout(), "quick-timeout")
            if name == "crash_rank1":
                if os.environ.get("RANK") == "1":
                    os._exit(3)  # a started process dies before it joins the process group
                continue
            run(out, name, **table[name])


    if __name__ == "__main__":
        main()
    '''
)


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    y = x @ torch.randn(FEATURES, 1, generator=generator)
    return TensorDataset(x, y)


class Regression(prec.TrainingModule):
    """The worker's model, for single-process reference runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(FEATURES, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).float(), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def single_process(
    precision: str | None = "32-true", max_epochs: int = 2, **kwargs: Any
) -> tuple[prec.Trainer, Regression]:
    """The same training on the full global batch (both ranks' batches together) in this process."""
    ckpt_path = kwargs.pop("ckpt_path", None)
    model = Regression()
    trainer = prec.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_epochs=max_epochs, enable_progress_bar=False, **kwargs
    )
    trainer.fit(model, DataLoader(dataset(), batch_size=PER_RANK_BATCH * WORLD), ckpt_path=ckpt_path)
    return trainer, model


def run_worker(command: list[str], cwd: Path, timeout: float = PROCESS_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a worker that starts its own ranks, without launcher variables; fail on a hang or a failed rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the 2-process run hung for {timeout} s: {error.stderr!r}")
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "exited with status" not in result.stderr, result.stderr
    return result


def run_failing_job(out: Path, scenarios: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the worker's ``scenarios`` as a job prec starts itself, expected to fail; the timeout guards a hang."""
    script = out / "worker.py"
    script.write_text(WORKER)
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, str(script), str(out), scenarios],
        cwd=out,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def results(out: Path, name: str) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    return [
        (json.loads((out / f"{name}_rank{rank}.json").read_text()), torch.load(out / f"{name}_rank{rank}.pt"))
        for rank in range(WORLD)
    ]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plain-script launch (prec starts rank 1) running every DDP scenario; the single-process checkpoint
    it resumes from is written here first."""
    out = tmp_path_factory.mktemp("ddp")
    trainer, _ = single_process(max_epochs=1)
    trainer.save_checkpoint(out / "single.ckpt")
    script = out / "worker.py"
    script.write_text(WORKER)
    run_worker([sys.executable, str(script), str(out), DDP_SCENARIOS, str(out / "single.ckpt")], cwd=out)
    return out


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance)


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
@pytest.mark.parametrize(
    ("name", "precision", "tolerance"), [("ddp32", "32-true", 1e-6), ("ddpbf16", "bf16-mixed", 2e-2)]
)
def test_ddp_fit_matches_single_process(ddp_run: Path, name: str, precision: str, tolerance: float) -> None:
    (info0, state0), (info1, state1) = results(ddp_run, name)
    assert info0["world_size"] == info1["world_size"] == WORLD
    assert info0["pid"] != info1["pid"]
    assert info0["launched_by"] == "prec"
    assert info0["global_step"] == info1["global_step"] == SAMPLES // (PER_RANK_BATCH * WORLD) * 2
    assert_same_state(state0, state1, rtol=0, atol=0)  # all-reduced gradients: bit-identical replicas
    reference = Regression()
    untrained = {key: value.clone() for key, value in reference.state_dict().items()}
    _, trained = single_process(precision)
    assert_same_state(state0, trained.state_dict(), rtol=tolerance, atol=tolerance)
    assert not torch.allclose(state0["layer.weight"], untrained["layer.weight"])


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_validate_returns_rank_zero_metrics(ddp_run: Path) -> None:
    (info0, _), (info1, _) = results(ddp_run, "ddp32")
    assert set(info0["validate"]) == {"val_loss"}
    assert info0["validate"]["val_loss"] > 0


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_rank_zero_alone_writes_logs(ddp_run: Path) -> None:
    """One metrics folder per Trainer (7 scenarios), not one per process: rank 1 logs nothing."""
    folders = sorted(path.name for path in ddp_run.glob("**/version_*") if path.is_dir())
    assert len(folders) == len(DDP_SCENARIOS.split(",")), folders


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
@pytest.mark.parametrize(("name", "bad_step"), [("scaler_forward", 2), ("scaler_after_reduce", 3)])
def test_inf_on_one_rank_skips_on_both(ddp_run: Path, name: str, bad_step: int) -> None:
    (info0, state0), (info1, state1) = results(ddp_run, name)
    assert info0["record"] == info1["record"]  # same skipped steps, same loss scale, step by step
    skipped = [entry["step"] for entry in info0["record"] if entry["skipped"]]
    assert skipped == [bad_step + 1]  # global_step is already advanced in on_train_batch_end
    scales = [entry["scale"] for entry in info0["record"]]
    assert scales[bad_step] == scales[bad_step - 1] / 2  # backed off once, on both ranks
    assert info0["skipped_steps"] == info1["skipped_steps"] == 1
    assert_same_state(state0, state1, rtol=0, atol=0)
    assert all(torch.isfinite(value).all() for value in state0.values())


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_torch_grad_scaler_alone_under_ddp(ddp_run: Path) -> None:
    """What torch does without prec's synchronised scaler: an inf before DDP's all-reduce reaches every rank
    (both skip), but an inf that appears on one rank after it (a hook, a clip) is seen by that rank only and
    the replicas diverge. Hence the synchronised inf check."""
    (forward0, _), (forward1, _) = results(ddp_run, "plain_forward")
    assert forward0["record"] == forward1["record"]
    assert [entry["step"] for entry in forward0["record"] if entry["skipped"]] == [3]
    (after0, state0), (after1, state1) = results(ddp_run, "plain_after_reduce")
    assert [entry["step"] for entry in after0["record"] if entry["skipped"]] == []
    assert [entry["step"] for entry in after1["record"] if entry["skipped"]] == [4]
    assert not torch.equal(state0["layer.weight"], state1["layer.weight"])


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_ddp_checkpoint_resumes_in_one_process(ddp_run: Path) -> None:
    """Saved after the 16-mixed run above (rank 0 writes one file with one scaler state; the step skipped on
    both ranks halved the scale) -> a single process resumes weights, scale and counters, then trains on."""
    checkpoint = torch.load(ddp_run / "ddp.ckpt", weights_only=True)
    (info0, ddp_state), _ = results(ddp_run, "scaler_forward")
    assert_same_state(checkpoint["state_dict"], ddp_state, rtol=0, atol=0)
    assert checkpoint["loops"]["global_step"] == 8
    assert checkpoint["precision_state"]["scaler"]["scale"] == info0["record"][-1]["scale"] == 2.0**9
    assert checkpoint["precision_state"]["skipped_steps"] == 1

    def half() -> prec.MixedPrecision:
        return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)

    trainer, resumed = single_process(None, max_epochs=2, plugins=[half()], ckpt_path=ddp_run / "ddp.ckpt")
    assert trainer.global_step == 8  # nothing left to train: the state is exactly the checkpoint's
    assert_same_state(resumed.state_dict(), ddp_state, rtol=0, atol=0)
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**9
    assert trainer.precision_plugin.skipped_steps == 1
    trainer, resumed = single_process(None, max_epochs=3, plugins=[half()], ckpt_path=ddp_run / "ddp.ckpt")
    assert trainer.global_step == 12
    assert all(torch.isfinite(value).all() for value in resumed.state_dict().values())


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_single_process_checkpoint_resumes_under_ddp(ddp_run: Path) -> None:
    (info0, state0), (info1, state1) = results(ddp_run, "ckpt_resume")
    assert info0["global_step"] == info1["global_step"] == 12  # 4 steps from the checkpoint, 8 more here
    assert_same_state(state0, state1, rtol=0, atol=0)
    _, straight = single_process(max_epochs=3)
    assert_same_state(state0, straight.state_dict(), rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_a_dead_rank_stops_the_job_instead_of_a_hang(tmp_path: Path) -> None:
    """Rank 1 dies before joining; rank 0 would wait in init_process_group for 30 minutes. The launcher's
    watchdog ends the job within its grace period instead."""
    result = run_failing_job(tmp_path, "crash_rank1,ddp32", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "prec: rank 1 exited with status 3 while rank 0 waits for it; stopping the job." in result.stderr
    assert not (tmp_path / "ddp32_rank0.json").exists()


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_a_rank_that_hangs_without_failing_is_named_with_where_it_was(tmp_path: Path) -> None:
    """Rank 1 sleeps inside training_step: alive, silent. Rank 0 fails in the all-reduce at the strategy's
    timeout (10 s here), and the launcher names rank 1 with its main thread's stack before stopping it."""
    result = run_failing_job(tmp_path, "hang_rank1", timeout=PROCESS_TIMEOUT_S)
    assert result.returncode != 0, result.stderr
    stderr = result.stderr
    assert "prec: rank 1 was still running and reported no error" in stderr, stderr
    where = stderr.split("Where rank 1 was:", 1)[1]
    assert "in training_step" in where and "worker.py" in where, stderr
    assert not (tmp_path / "hang_rank1_rank0.json").exists()


@pytest.mark.timeout(PROCESS_TIMEOUT_S + 60)
def test_torchrun_launch_joins_its_process_group(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    run_worker([*command, str(script), str(tmp_path), "ddp32"], cwd=tmp_path)
    (info0, state0), (info1, state1) = results(tmp_path, "ddp32")
    assert info0["launched_by"] == info1["launched_by"] == "torchrun"
    assert info0["world_size"] == WORLD
    assert_same_state(state0, state1, rtol=0, atol=0)
    _, trained = single_process()
    assert_same_state(state0, trained.state_dict(), rtol=1e-6, atol=1e-6)
