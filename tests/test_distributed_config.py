"""Distributed configuration in one process: registry entries, errors, launcher variables, data sharding.

No process group is started here; launcher variables are set with monkeypatch exactly as torchrun sets them.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import prec
from prec.cluster.data import EpochLoader, distribute_dataloader
from prec.errors import ConfigurationError, PrecWarning, UnknownStrategyError
from prec.precision import MixedPrecision, Precision, TruePrecision
from prec.strategies.ddp import DDPStrategy
from prec.strategies.fsdp import FSDPStrategy, mixed_precision_policy

LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)


def launched(monkeypatch: pytest.MonkeyPatch, rank: int, world: int, local_world: int, **extra: str) -> None:
    values = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank % local_world),
        "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)


class Tiny(prec.TrainingModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_strategies_are_registry_entries_of_the_core() -> None:
    registry = prec.get_registry()
    assert {"single", "ddp", "fsdp"} <= set(registry.strategies)
    for name in ("ddp", "fsdp"):
        assert registry.strategies[name].origin.plugin == "prec.core"
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=1)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.world_size, trainer.global_rank, trainer.is_global_zero) == (1, 0, True)


def test_a_plugin_registers_a_configured_strategy() -> None:
    class Configured:
        @prec.hookimpl
        def prec_register_strategies(self, register: Any) -> None:
            options = {"find_unused_parameters": True, "timeout": timedelta(minutes=5)}
            register("ddp_unused", functools.partial(DDPStrategy, **options), precisions=["32-true"])
            register("fsdp_linear", functools.partial(FSDPStrategy, shard_modules={torch.nn.Linear}))

    name = prec.register_plugin(Configured(), "configured-strategies")
    try:
        strategy = prec.Trainer(accelerator="cpu", strategy="ddp_unused", devices=1).strategy
        assert isinstance(strategy, DDPStrategy)
        assert strategy.ddp_options == {"find_unused_parameters": True}
        assert strategy.timeout == timedelta(minutes=5)
        assert isinstance(prec.Trainer(accelerator="cpu", strategy="fsdp_linear").strategy, FSDPStrategy)
        with pytest.raises(ConfigurationError, match=r"'ddp_unused' does not support precision '16-true'.*32-true"):
            prec.Trainer(accelerator="cpu", strategy="ddp_unused", precision="16-true")
    finally:
        prec.unregister_plugin(name)


def test_auto_picks_ddp_for_several_devices() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU devices")
    assert prec.Trainer(accelerator="cpu", devices=1).strategy.name == "single"
    trainer = prec.Trainer(accelerator="cpu", devices=2)
    assert trainer.strategy.name == "ddp" and trainer.world_size == 2


def test_unknown_strategy_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownStrategyError, match=r"'dpp' is not registered\. Available: ddp, fsdp, single.*'ddp'"):
        prec.Trainer(accelerator="cpu", strategy="dpp")


def test_more_devices_than_the_machine_has() -> None:
    count = os.cpu_count() or 1
    with pytest.raises(ConfigurationError, match=rf"this machine has {count}"):
        prec.Trainer(accelerator="cpu", strategy="ddp", devices=count + 1)


def test_precision_fsdp_cannot_map_lists_the_supported_ones() -> None:
    class Fp8Plugin:
        @prec.hookimpl
        def prec_register_precisions(self, register: Any) -> None:
            register(
                "fp8-test-mixed", "cpu", lambda accelerator: MixedPrecision("fp8-test-mixed", "cpu", torch.bfloat16)
            )

    name = prec.register_plugin(Fp8Plugin(), "fp8-test")
    try:
        assert prec.Trainer(accelerator="cpu", strategy="ddp", precision="fp8-test-mixed").precision == "fp8-test-mixed"
        with pytest.raises(ConfigurationError, match=r"'fsdp' does not support precision 'fp8-test-mixed'.*bf16-mixed"):
            prec.Trainer(accelerator="cpu", strategy="fsdp", precision="fp8-test-mixed")
    finally:
        prec.unregister_plugin(name)


def test_several_nodes_need_a_launcher() -> None:
    with pytest.raises(ConfigurationError, match=r"num_nodes=2 needs a launcher on every node.*torchrun --nnodes 2"):
        prec.Trainer(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2)


def test_joins_what_the_launcher_describes(monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, rank=3, world=4, local_world=2, GROUP_RANK="1")
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, num_nodes=2)
    strategy = trainer.strategy
    assert isinstance(strategy, DDPStrategy)
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (4, 3, 1, 1)
    assert not trainer.is_global_zero


def test_launcher_world_size_must_match(monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, rank=0, world=4, local_world=4)
    with pytest.raises(ConfigurationError, match=r"WORLD_SIZE=4 processes, but devices=2 x num_nodes=1 = 2"):
        prec.Trainer(accelerator="cpu", strategy="ddp", devices=2)


def test_launcher_without_master_address(monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, rank=0, world=2, local_world=2)
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ConfigurationError, match=r"MASTER_ADDR is not set"):
        prec.Trainer(accelerator="cpu", strategy="ddp", devices=2)


def test_single_strategy_under_a_launcher_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, rank=1, world=2, local_world=2)
    trainer = prec.Trainer(accelerator="cpu", devices=1, max_steps=1, enable_progress_bar=False)
    with pytest.warns(PrecWarning, match=r"rank 1 of WORLD_SIZE=2.*trains in this process alone"):
        trainer.fit(Tiny(), DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=1))


def test_plain_script_launch_refuses_to_rerun_pytest() -> None:
    """Starting ranks re-runs the program; pytest (or a notebook, ``python -c``) cannot be re-run."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU devices")
    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=1, enable_progress_bar=False)
    with pytest.raises(ConfigurationError, match=r"cannot be re-run.*torchrun --nproc_per_node N"):
        trainer.fit(Tiny(), DataLoader(TensorDataset(torch.ones(2, 2)), batch_size=1))
    assert "RANK" not in os.environ and not torch.distributed.is_initialized()


def test_manual_optimization_refuses_a_static_graph_under_ddp() -> None:
    """Manual optimization runs under ddp (tests/test_distributed_manual.py); a static graph cannot: its first
    backward is reduced through DDP's output, which manual_backward runs before. Refused before DDP is built."""

    class Manual(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    trainer = prec.Trainer(accelerator="cpu", strategy="ddp", devices=1)
    strategy = DDPStrategy(trainer.accelerator, [0], trainer.precision_plugin, static_graph=True)
    strategy._stage = "fit"
    with pytest.raises(ConfigurationError, match=r"static_graph=True cannot train with manual optimization"):
        strategy.setup_module(Manual())


def test_fsdp_policy_follows_the_precision() -> None:
    bf16 = mixed_precision_policy(MixedPrecision("bf16-mixed", "cpu", torch.bfloat16))
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    half = mixed_precision_policy(MixedPrecision("16-mixed", "cpu", torch.float16, scaler=True))
    assert (half.param_dtype, half.reduce_dtype) == (torch.float16, torch.float32)
    for precision in (Precision(), TruePrecision("bf16-true", torch.bfloat16)):
        policy = mixed_precision_policy(precision)
        assert (policy.param_dtype, policy.reduce_dtype) == (None, None)  # the shards keep the true dtype


# -- one process, no launcher: a private process group -------------------------------------------------------
@pytest.fixture
def process_group_closed() -> Any:
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_process_trains_like_single(strategy: str, process_group_closed: None) -> None:
    def fit(name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = Tiny()
        trainer = prec.Trainer(accelerator="cpu", strategy=name, devices=1, max_epochs=1, enable_progress_bar=False)
        trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(1)))))
        return trainer.strategy.module_state_dict(model)

    distributed = fit(strategy)
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1
    single = fit("single")
    for key in single:
        torch.testing.assert_close(distributed[key], single[key])


def test_fsdp_refuses_parameters_left_on_meta(process_group_closed: None) -> None:
    class OnMeta(Tiny):
        def configure_model(self) -> None:
            with torch.device("meta"):
                self.layer = torch.nn.Linear(2, 1)

    trainer = prec.Trainer(accelerator="cpu", strategy="fsdp", devices=1, max_steps=1, enable_progress_bar=False)
    with pytest.raises(ConfigurationError, match=r"2 parameters are still on the meta device \(layer.weight"):
        trainer.fit(OnMeta(), DataLoader(TensorDataset(torch.ones(2, 2))))


class TinyAdam(Tiny):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.1)


def test_a_single_process_checkpoint_resumes_under_fsdp(tmp_path: Any, process_group_closed: None) -> None:
    """The full single-file checkpoint (Adam's moments included) loads into FSDP's shards through the
    optimizer's load_state_dict pre-hook, and training goes on as in one process."""
    loader = DataLoader(TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(1))), batch_size=2)

    def fit(strategy: str, epochs: int, ckpt_path: Any = None) -> tuple[prec.Trainer, TinyAdam]:
        torch.manual_seed(0)
        model = TinyAdam()
        trainer = prec.Trainer(
            accelerator="cpu", strategy=strategy, devices=1, max_epochs=epochs, enable_progress_bar=False, logger=False
        )
        trainer.fit(model, loader, ckpt_path=ckpt_path)
        return trainer, model

    trainer, _ = fit("single", 1)
    trainer.save_checkpoint(tmp_path / "single.ckpt")
    _, straight = fit("single", 2)
    resumed_trainer, resumed = fit("fsdp", 2, ckpt_path=tmp_path / "single.ckpt")
    assert resumed_trainer.global_step == 8
    state = resumed_trainer.strategy.module_state_dict(resumed)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-6)


# -- data sharding -----------------------------------------------------------------------------------------
def indices(loader: Any) -> list[int]:
    return [int(value) for (batch,) in loader for value in batch]


def numbered(count: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(count))


def test_sequential_loader_is_split_between_ranks() -> None:
    epoch = [0]
    loaders = [
        distribute_dataloader(DataLoader(numbered(), batch_size=2), 2, rank, lambda: epoch[0]) for rank in (0, 1)
    ]
    assert all(isinstance(loader, EpochLoader) for loader in loaders)
    assert indices(loaders[0]) == [0, 2, 4, 6, 8] and indices(loaders[1]) == [1, 3, 5, 7, 9]
    assert len(loaders[0]) == 3 and loaders[0].batch_size == 2


def test_shuffled_loader_reshuffles_each_epoch_the_same_on_every_rank() -> None:
    epoch = [0]
    loaders = [
        distribute_dataloader(DataLoader(numbered(), batch_size=5, shuffle=True), 2, rank, lambda: epoch[0])
        for rank in (0, 1)
    ]
    first = [indices(loader) for loader in loaders]
    assert sorted(first[0] + first[1]) == list(range(10))  # disjoint shards of one permutation
    assert [indices(loader) for loader in loaders] == first  # same epoch, same order
    epoch[0] = 1
    assert [indices(loader) for loader in loaders] != first


def test_users_distributed_sampler_is_kept() -> None:
    sampler = DistributedSampler(numbered(), num_replicas=2, rank=1, shuffle=True)
    loader = DataLoader(numbered(), batch_size=2, sampler=sampler)
    wrapped = distribute_dataloader(loader, 2, 1, lambda: 7)
    assert wrapped.loader is loader
    iter(wrapped)
    assert sampler.epoch == 7


def test_custom_sampler_and_plain_iterables_warn() -> None:
    class Reversed(Sampler[int]):
        def __iter__(self) -> Any:
            return iter(range(9, -1, -1))

        def __len__(self) -> int:
            return 10

    loader = DataLoader(numbered(), sampler=Reversed())
    with pytest.warns(PrecWarning, match=r"its own sampler \(Reversed\).*every one of the 2 processes"):
        assert distribute_dataloader(loader, 2, 0, lambda: 0) is loader
    batches = [torch.ones(2)]
    with pytest.warns(PrecWarning, match=r"list is not a torch DataLoader"):
        assert distribute_dataloader(batches, 2, 0, lambda: 0) is batches
