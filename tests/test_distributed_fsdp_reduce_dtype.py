"""FSDP's ``reduce_dtype``: gradients are reduce-scattered in float32 by default and in bfloat16 on request, for
real on two gloo processes (prec starts rank 1 itself). Each rank records the dtype of every reduce-scatter input
through FSDP's public custom-comm hook, which performs the real collective."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _modules import sibling

import prec
from prec.distributed import FSDPStrategy

pytestmark = pytest.mark.slow

HANG_GUARD_S = 420  # the launch takes well under a minute here

WORKER = textwrap.dedent(
    """
    import functools, json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter
    from torch.utils.data import DataLoader, TensorDataset

    import prec
    from prec.distributed import FSDPStrategy


    class Recording(ReduceScatter):
        def __init__(self):
            self.dtypes = set()

        def allocate(self, size, *, dtype, device):
            return torch.empty(*size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            self.dtypes.add(str(input_tensor.dtype))
            return dist.reduce_scatter_tensor(output_tensor, input_tensor, group=group, op=op, async_op=async_op)


    class Net(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Linear(8, 16)
            self.head = torch.nn.Linear(16, 1)
            self.comm = Recording()

        def configure_model(self):
            fully_shard(self.body, mp_policy=self.trainer.strategy.mp_policy)
            self.body.set_custom_reduce_scatter(self.comm)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.head(torch.relu(self.body(x))).float(), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)


    class Strategies:
        @prec.hookimpl
        def prec_register_strategies(self, register):
            register("fsdp_bf16_reduce", functools.partial(FSDPStrategy, reduce_dtype=torch.bfloat16))


    prec.register_plugin(Strategies(), "reduce-strategies")
    out = Path(sys.argv[1])
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    for strategy in ("fsdp", "fsdp_bf16_reduce"):
        model = Net()
        trainer = prec.Trainer(
            accelerator="cpu", strategy=strategy, devices=2, precision="bf16-mixed", max_epochs=1,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            default_root_dir=out, logger=False,
        )
        trainer.fit(model, DataLoader(data, batch_size=4))
        info = {
            "reduce_dtype": str(trainer.strategy.reduce_dtype),
            "reduced_in": sorted(model.comm.dtypes),
            "shard_grad_dtype": str(model.body.weight.dtype),
            "finite": all(bool(torch.isfinite(p.full_tensor() if hasattr(p, "full_tensor") else p).all())
                          for p in model.parameters()),
        }
        (out / f"{strategy}_rank{trainer.global_rank}.json").write_text(json.dumps(info))
    """
)


@pytest.fixture(scope="module")
def reduce_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp_reduce_dtype")
    script = out / "worker.py"
    script.write_text(WORKER)
    ddp = sibling("test_distributed_ddp.py")  # its worker launch: no launcher variables, a hang guard
    ddp.run_worker([sys.executable, str(script), str(out)], cwd=out, timeout=HANG_GUARD_S)
    return out


def _info(out: Path, strategy: str, rank: int) -> dict[str, object]:
    return json.loads((out / f"{strategy}_rank{rank}.json").read_text())


@pytest.mark.timeout(HANG_GUARD_S + 60)
@pytest.mark.parametrize(
    ("strategy", "reduced_in"), [("fsdp", "torch.float32"), ("fsdp_bf16_reduce", "torch.bfloat16")]
)
def test_gradients_are_reduced_in_the_chosen_dtype(reduce_run: Path, strategy: str, reduced_in: str) -> None:
    for rank in range(2):
        info = _info(reduce_run, strategy, rank)
        assert info["reduce_dtype"] == reduced_in
        assert info["reduced_in"] == [reduced_in]  # every reduce-scatter of the sharded unit
        assert info["shard_grad_dtype"] == "torch.float32"  # the shards stay float32 under bf16-mixed
        assert info["finite"]


def test_an_unsupported_reduce_dtype_is_a_configuration_error() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"reduce_dtype=torch\.float16\) must be torch\.float32 or"):
        FSDPStrategy(reduce_dtype=torch.float16)
