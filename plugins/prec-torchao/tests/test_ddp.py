"""fp8-mixed under DDP for real: two CPU processes on gloo, started by prec itself, each with Float8Linear layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
PROCESS_TIMEOUT_S = 300  # a hang guard: the run takes about 15 s on a busy 2-core machine

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from torchao.float8.float8_linear import Float8Linear

    import prec


    class Model(prec.TrainingModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
            self.head = torch.nn.Linear(32, 4)
            self.losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.head(self.net(x)).float(), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)


    def main():
        out = Path(sys.argv[1])
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(128, 32, generator=generator)
        y = (x @ torch.randn(32, 4, generator=generator)).argmax(dim=1)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
        trainer = prec.Trainer(
            accelerator="cpu", strategy="ddp", devices=2, precision="fp8-mixed",
            precision_options={"emulate": True}, max_epochs=4, enable_progress_bar=False,
        )
        model = Model()
        trainer.fit(model, loader)
        rank = trainer.global_rank
        layers = [name for name, layer in model.named_modules() if isinstance(layer, Float8Linear)]
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")
        (out / f"rank{rank}.json").write_text(json.dumps({"layers": layers, "losses": model.losses}))


    if __name__ == "__main__":
        main()
    """
)


def test_ddp_on_gloo_keeps_the_ranks_in_step(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    infos = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for info in infos:
        assert info["layers"] == ["net.0", "net.2"]  # the head stays a plain Linear
        assert sum(info["losses"][-4:]) < 0.85 * sum(info["losses"][:4])
    assert infos[0]["losses"] != infos[1]["losses"]  # each rank saw its own half of the data
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), f"{key} differs between the ranks"
