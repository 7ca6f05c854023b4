"""Manual optimization under ddp and fsdp, for real: two CPU processes on gloo, started by prec.

``manual_backward`` runs inside ``training_step``; DDP's reducer is prepared for it and FSDP2's post-backward runs
after it (their own machinery, no all-reduce of prec's). One launch per strategy runs every scenario in one
process group; each rank writes its weights and what it counted, and the tests compare them with single-process
runs of the same modules done here, and with raw torch DDP run in the worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _modules import sibling
from torch.utils.data import DataLoader

import prec

pytestmark = pytest.mark.slow


ddp = sibling("test_distributed_ddp.py")  # its process launch and result helpers
TIMEOUT_S = ddp.PROCESS_TIMEOUT_S + 60
STEPS = ddp.SAMPLES // (ddp.PER_RANK_BATCH * ddp.WORLD) * 2  # 2 epochs of 4 steps
DDP_SCENARIOS = "ddp32,ddpbf16,ddp_scaler,gan,accumulate,accumulate_synced,accumulate_lightning,raw_ddp"
FSDP_SCENARIOS = "fsdp32,fsdpbf16,fsdp_accumulate,fsdp_twice,fsdp_toggle"

WORKER = '''
"""Manual-optimization scenarios under strategy="ddp"/"fsdp" on 2 CPU processes (the modules are also imported
by the tests for their single-process reference runs)."""
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.functional import mse_loss
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import prec

SAMPLES, FEATURES, BATCH = 32, 8, 4


def data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    y = x @ torch.randn(FEATURES, 1, generator=generator)
    return TensorDataset(x, y)


class Manual(prec.TrainingModule):
    """One optimizer stepped by hand; ``clip`` clips through prec, ``inject`` makes one rank's loss inf."""

    def __init__(self, clip=None, inject=None):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(FEATURES, 1)
        self.clip, self.inject = clip, inject
        self.record = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        loss = mse_loss(self.layer(x).float(), y)
        trainer = self.trainer
        if self.inject is not None and (trainer.global_rank, trainer.global_step) == self.inject:
            loss = loss * float("inf")
        self.manual_backward(loss)
        if self.clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.clip)
        opt.step()
        opt.zero_grad()
        precision = trainer.precision_plugin
        scaler = getattr(precision, "scaler", None)
        self.record.append(
            {"skipped": bool(precision.step_skipped), "scale": None if scaler is None else float(scaler.get_scale())}
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Accumulate(Manual):
    """Two micro-batches per optimizer step; the first keeps its gradients local (``no_sync``) unless ``synced``.
    The step comes after the second micro-batch's backward, which synchronises both. ``lightning``: through
    Lightning's ``opt.toggle_model(sync_grad=...)`` instead of ``self.no_backward_sync(...)``."""

    def __init__(self, synced=False, lightning=False):
        super().__init__()
        self.synced, self.lightning = synced, lightning

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        stepping = batch_idx % 2 == 1
        sync = stepping or self.synced
        with opt.toggle_model(sync_grad=sync) if self.lightning else self.no_backward_sync(enabled=not sync):
            self.manual_backward(mse_loss(self.layer(x).float(), y) / 2)
        if stepping:
            opt.step()
            opt.zero_grad()


class Twice(Manual):
    """Two forward/backward/step rounds in one training_step on the two halves of the batch: the second forward
    must see the weights the first step wrote."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        half = x.shape[0] // 2
        for rows in (slice(0, half), slice(half, None)):
            self.manual_backward(mse_loss(self.layer(x[rows]).float(), y[rows]))
            opt.step()
            opt.zero_grad()


class GAN(prec.TrainingModule):
    """Lightning's GAN step: the generator, then the discriminator, each under toggle_optimizer."""

    def __init__(self, toggle=True):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.toggle = toggle
        self.generator = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, FEATURES))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        g_opt, d_opt = self.optimizers()
        noise = real[:, :1] + 0.1 * self.trainer.global_step  # per sample: ranks' batches together are one's
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        if self.toggle:
            self.toggle_optimizer(g_opt)
        fake = self.generator(noise)
        g_loss = bce(self.discriminator(fake), torch.ones(real.shape[0], 1))
        self.manual_backward(g_loss)
        g_opt.step()
        g_opt.zero_grad()
        if self.toggle:
            self.untoggle_optimizer(g_opt)
            self.toggle_optimizer(d_opt)
        real_loss = bce(self.discriminator(real), torch.ones(real.shape[0], 1))
        fake_loss = bce(self.discriminator(fake.detach()), torch.zeros(real.shape[0], 1))
        self.manual_backward((real_loss + fake_loss) / 2)
        d_opt.step()
        d_opt.zero_grad()
        if self.toggle:
            self.untoggle_optimizer(d_opt)

    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.generator.parameters(), lr=0.1),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.1),
        ]


class CountAllReduces(prec.Callback):
    """Registers a DDP communication hook that counts the gradient buckets DDP all-reduces."""

    def __init__(self):
        self.count = 0

    def on_train_start(self, trainer, module):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counted(state, bucket):
            self.count += 1
            return allreduce_hook(state, bucket)

        trainer.state.wrapped_model.register_comm_hook(None, counted)


def raw_ddp(out):
    """Torch's DDP alone, the same training: the reference prec's manual steps must equal exactly."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    layer = torch.nn.Linear(FEATURES, 1)
    model = DistributedDataParallel(layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sampler = DistributedSampler(data(), num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=False)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in DataLoader(data(), batch_size=BATCH, sampler=sampler):
            mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    state = {f"layer.{key}": value for key, value in layer.state_dict().items()}
    torch.save(state, out / f"raw_ddp_rank{dist.get_rank()}.pt")


def half():
    return prec.MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True, init_scale=2.0**10)


def run(out, name, model, strategy="ddp", **options):
    options.setdefault("precision", None if "plugins" in options else "32-true")
    counter = CountAllReduces() if strategy == "ddp" else None
    trainer = prec.Trainer(
        accelerator="cpu", strategy=strategy, devices=2, max_epochs=2, enable_progress_bar=False,
        default_root_dir=out, enable_checkpointing=False, logger=False,
        callbacks=[counter] if counter else [], **options,
    )
    info = {"error": None}
    try:
        trainer.fit(model, DataLoader(data(), batch_size=BATCH))
    except prec.ConfigurationError as error:
        info["error"] = str(error)
    rank = trainer.global_rank
    info.update(
        global_step=trainer.global_step,
        all_reduces=counter.count if counter else None,
        record=getattr(model, "record", []),
        skipped_steps=trainer.precision_plugin.skipped_steps,
    )
    if info["error"] is None:
        torch.save(trainer.strategy.module_state_dict(model), out / f"{name}_rank{rank}.pt")
    (out / f"{name}_rank{rank}.json").write_text(json.dumps(info))


FSDP = dict(strategy="fsdp", precision="32-true")
TABLE = {  # name: (module, Trainer options); 32-true unless said
    "ddp32": lambda: (Manual(), {}),
    "ddpbf16": lambda: (Manual(clip=0.5), dict(precision="bf16-mixed")),
    "ddp_scaler": lambda: (Manual(inject=(1, 2)), dict(plugins=[half()])),
    "gan": lambda: (GAN(), {}),
    "accumulate": lambda: (Accumulate(), {}),
    "accumulate_synced": lambda: (Accumulate(synced=True), {}),
    "accumulate_lightning": lambda: (Accumulate(lightning=True), {}),
    "fsdp32": lambda: (Manual(clip=0.5), FSDP),
    "fsdpbf16": lambda: (Manual(), dict(FSDP, precision="bf16-mixed")),
    "fsdp_accumulate": lambda: (Accumulate(), FSDP),
    "fsdp_twice": lambda: (Twice(), FSDP),
    "fsdp_toggle": lambda: (GAN(), FSDP),
}


def main():
    out = Path(sys.argv[1])
    for name in sys.argv[2].split(","):
        if name == "raw_ddp":
            raw_ddp(out)
            continue
        model, options = TABLE[name]()
        run(out, name, model, **options)


if __name__ == "__main__":
    main()
'''

worker: dict[str, Any] = {"__name__": "manual_worker"}
exec(compile(WORKER, "manual_worker", "exec"), worker)  # the same modules, for the single-process references


def single_process(model: prec.TrainingModule, **options: Any) -> prec.TrainingModule:
    """``model`` trained in this process on the global batch (both ranks' batches together)."""
    options.update(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False)
    trainer = prec.Trainer(enable_progress_bar=False, **options)
    trainer.fit(model, DataLoader(worker["data"](), batch_size=ddp.PER_RANK_BATCH * ddp.WORLD))
    return model


def launch(tmp_path_factory: pytest.TempPathFactory, name: str, scenarios: str) -> Path:
    out = tmp_path_factory.mktemp(name)
    (out / "worker.py").write_text(WORKER)
    ddp.run_worker([sys.executable, str(out / "worker.py"), str(out), scenarios], cwd=out)
    return out


def results(out: Path, name: str) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    weights = [out / f"{name}_rank{rank}.pt" for rank in range(ddp.WORLD)]
    infos = [json.loads((out / f"{name}_rank{rank}.json").read_text()) for rank in range(ddp.WORLD)]
    return [(info, torch.load(path) if path.exists() else {}) for info, path in zip(infos, weights, strict=True)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch(tmp_path_factory, "manual_ddp", DDP_SCENARIOS)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return launch(tmp_path_factory, "manual_fsdp", FSDP_SCENARIOS)


def replicas(out: Path, name: str) -> dict[str, torch.Tensor]:
    """Rank 0's weights, after checking that rank 1's are bit-identical and that both trained every step."""
    (info0, state0), (info1, state1) = results(out, name)
    assert info0["error"] is None, info0["error"]
    assert info0["global_step"] == info1["global_step"]
    ddp.assert_same_state(state0, state1, rtol=0, atol=0)
    return state0


@pytest.mark.timeout(TIMEOUT_S)
def test_ddp_manual_step_equals_torch_ddp_and_one_process(ddp_run: Path) -> None:
    state = replicas(ddp_run, "ddp32")
    ddp.assert_same_state(state, torch.load(ddp_run / "raw_ddp_rank0.pt"), rtol=0, atol=0)  # bit for bit
    ddp.assert_same_state(state, torch.load(ddp_run / "raw_ddp_rank1.pt"), rtol=0, atol=0)
    reference = single_process(worker["Manual"](), precision="32-true")
    ddp.assert_same_state(state, reference.state_dict(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(state["layer.weight"], worker["Manual"]().layer.weight)
    (info, _), _ = results(ddp_run, "ddp32")
    assert info["global_step"] == STEPS
    assert info["all_reduces"] == STEPS  # DDP's reducer did the reduction: one bucket per manual_backward


@pytest.mark.timeout(TIMEOUT_S)
def test_ddp_manual_bf16_with_clipping_matches_one_process(ddp_run: Path) -> None:
    state = replicas(ddp_run, "ddpbf16")
    reference = single_process(worker["Manual"](clip=0.5), precision="bf16-mixed")
    ddp.assert_same_state(state, reference.state_dict(), rtol=2e-2, atol=2e-2)


@pytest.mark.timeout(TIMEOUT_S)
def test_ddp_manual_scaler_skips_a_non_finite_step_on_every_rank(ddp_run: Path) -> None:
    """16-mixed's grad scaler under manual optimization: rank 1's inf loss at step 2 reaches both ranks through
    DDP's all-reduce; both skip that step and back off the scale once."""
    (info0, state0), (info1, state1) = results(ddp_run, "ddp_scaler")
    assert info0["record"] == info1["record"]
    assert [index for index, entry in enumerate(info0["record"]) if entry["skipped"]] == [2]
    scales = [entry["scale"] for entry in info0["record"]]  # recorded in the step, before the scale's update
    assert scales[3] == scales[2] / 2
    assert info0["skipped_steps"] == info1["skipped_steps"] == 1
    ddp.assert_same_state(state0, state1, rtol=0, atol=0)
    assert all(torch.isfinite(value).all() for value in state0.values())


@pytest.mark.timeout(TIMEOUT_S)
def test_ddp_gan_with_two_optimizers_matches_one_process(ddp_run: Path) -> None:
    state = replicas(ddp_run, "gan")
    (info, _), _ = results(ddp_run, "gan")
    assert info["all_reduces"] == 2 * STEPS  # one per manual_backward: the generator's, the discriminator's
    reference = single_process(worker["GAN"](), precision="32-true")
    ddp.assert_same_state(state, reference.state_dict(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state["generator.0.weight"], worker["GAN"]().generator[0].weight)


@pytest.mark.timeout(TIMEOUT_S)
def test_manual_accumulation_all_reduces_once_per_optimizer_step(ddp_run: Path) -> None:
    """Two micro-batches per step, the first inside ``no_backward_sync``: DDP all-reduces once per step (the
    comm hook counts its buckets; this model has one), not once per micro-batch as without it."""
    state = replicas(ddp_run, "accumulate")
    (accumulated, _), _ = results(ddp_run, "accumulate")
    (synced, synced_state), _ = results(ddp_run, "accumulate_synced")
    assert accumulated["global_step"] == synced["global_step"] == STEPS // 2  # optimizer steps, as in Lightning
    assert accumulated["all_reduces"] == STEPS // 2  # one per optimizer step
    assert synced["all_reduces"] == STEPS  # one per micro-batch
    ddp.assert_same_state(state, synced_state, rtol=1e-6, atol=1e-6)  # the same gradients, reduced later
    (lightning, lightning_state), _ = results(ddp_run, "accumulate_lightning")  # opt.toggle_model(sync_grad=...)
    assert lightning["all_reduces"] == STEPS // 2
    ddp.assert_same_state(lightning_state, state, rtol=0, atol=0)
    reference = single_process(worker["Accumulate"](), precision="32-true")
    ddp.assert_same_state(state, reference.state_dict(), rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize(
    ("name", "precision", "tolerance"), [("fsdp32", "32-true", 1e-6), ("fsdpbf16", "bf16-mixed", 3e-2)]
)
def test_fsdp_manual_step_matches_one_process(fsdp_run: Path, name: str, precision: str, tolerance: float) -> None:
    state = replicas(fsdp_run, name)
    model = worker["Manual"](clip=0.5 if name == "fsdp32" else None)
    reference = single_process(model, precision=precision)
    ddp.assert_same_state(state, reference.state_dict(), rtol=tolerance, atol=tolerance)


@pytest.mark.timeout(TIMEOUT_S)
def test_fsdp_manual_accumulation_matches_one_process(fsdp_run: Path) -> None:
    state = replicas(fsdp_run, "fsdp_accumulate")
    reference = single_process(worker["Accumulate"](), precision="32-true")
    ddp.assert_same_state(state, reference.state_dict(), rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(TIMEOUT_S)
def test_fsdp_second_forward_sees_the_first_steps_weights(fsdp_run: Path) -> None:
    """Two forward/backward/step rounds in one training_step: the root unit stays gathered after a backward and is
    gathered again from the stepped shards."""
    state = replicas(fsdp_run, "fsdp_twice")
    reference = single_process(worker["Twice"](), precision="32-true")
    ddp.assert_same_state(state, reference.state_dict(), rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(TIMEOUT_S)
def test_fsdp_toggle_optimizer_on_gathered_parameters_is_refused(fsdp_run: Path) -> None:
    (info0, _), (info1, _) = results(fsdp_run, "fsdp_toggle")
    for info in (info0, info1):
        assert info["error"] is not None
        assert "toggle_optimizer() under strategy='fsdp'" in info["error"]
        assert "fake.detach()" in info["error"]
