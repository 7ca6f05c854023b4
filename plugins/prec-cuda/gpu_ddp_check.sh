#!/usr/bin/env bash
# On a machine with CUDA GPUs: prec's distributed path for real on nccl. One process per GPU (torchrun), with
#   - DDP and FSDP2 fits at bf16-mixed (devices = every GPU), replicas compared bit for bit;
#   - the all-reduce count with 4 micro-batches per step under Strategy.no_gradient_sync (expected: 1 per step);
#   - a sharded (torch.distributed.checkpoint) save -> load -> train that must equal an uninterrupted run;
#   - manual optimization under DDP with accumulation (replicas identical);
#   - bf16-true master_weights ("fp32", "kahan") under FSDP2: sharded resume equal to an uninterrupted run.
# Without a GPU it says so and exits 0. PYTHON selects the interpreter; results go to $OUT/gpu_ddp_check.json
# when OUT is set, else to the working directory.
#
#   plugins/prec-cuda/gpu_ddp_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
cd "$ROOT"
GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
if [ "$GPUS" = "0" ]; then
    echo "no CUDA GPU here: nothing to check."
    exit 0
fi
RESULTS="${OUT:-$PWD}/gpu_ddp_check.json"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cat > "$SCRATCH/check.py" <<'PY'
import contextlib, json, os, sys, time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

import prec
from prec.strategies.ddp import unwrap
from prec.checkpoint.sharded import load_sharded, save_sharded

results_file, scratch = Path(sys.argv[1]), Path(sys.argv[2])
world = int(os.environ["WORLD_SIZE"])
rank = int(os.environ["RANK"])
report = {"world_size": world, "gpu": torch.cuda.get_device_name(int(os.environ["LOCAL_RANK"]))}


class Model(prec.TrainingModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

    def training_step(self, batch, batch_idx=0):
        x, y = batch
        return torch.nn.functional.mse_loss(self.body(x).float(), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


x = torch.randn(512, 256, generator=torch.Generator().manual_seed(1))
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
for name in ("ddp", "fsdp"):
    trainer = prec.Trainer(accelerator="gpu", strategy=name, devices=world, precision="bf16-mixed", max_epochs=1,
                           enable_progress_bar=False, logger=False)
    model = Model()
    start = time.perf_counter()
    trainer.fit(model, loader)
    state = trainer.strategy.module_state_dict(model)
    gathered = trainer.strategy.all_gather_object({k: v.cpu() for k, v in state.items()})
    same = all(torch.equal(g[k], gathered[0][k]) for g in gathered for k in state)
    report[name] = {"seconds": time.perf_counter() - start, "replicas_identical": same,
                    "backend": dist.get_backend(), "device": str(trainer.strategy.root_device)}
strategy = trainer.strategy

# all-reduce count under accumulation (DDP comm hook)
ddp = prec.Trainer(accelerator="gpu", strategy="ddp", devices=world, enable_progress_bar=False, logger=False).strategy
wrapped = ddp.setup_module(Model())
calls = [0]
def hook(state, bucket):
    calls[0] += 1
    return default_hooks.allreduce_hook(state, bucket)
wrapped.register_comm_hook(None, hook)
optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-3)
for step in range(4):
    for micro in range(4):
        batch = (x[:16].cuda(), x[:16].sum(1, keepdim=True).cuda())
        with ddp.no_gradient_sync(wrapped) if micro < 3 else contextlib.nullcontext():
            wrapped("training_step", batch).backward()
    optimizer.step()
    optimizer.zero_grad()
report["allreduce_calls_per_step_with_accumulation_4"] = calls[0] / 4

# sharded save -> load -> train == straight (32-true on the GPU)
def sharded():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    for layer in (net[0], net[2], net):
        fully_shard(layer)
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)

def train(net, opt, steps):
    for step in steps:
        g = torch.Generator().manual_seed(10 * step + rank)
        xb = torch.randn(8, 64, generator=g).cuda()
        torch.nn.functional.mse_loss(net(xb), xb.sum(1, keepdim=True)).backward()
        opt.step()
        opt.zero_grad()

net, opt = sharded(); train(net, opt, range(6))
straight = {k: v.full_tensor() for k, v in net.state_dict().items()}
net, opt = sharded(); train(net, opt, range(3))
save_sharded(scratch / "ckpt", net, [opt], {"rank": rank})
net, opt = sharded()
load_sharded(scratch / "ckpt", net, [opt]); train(net, opt, range(3, 6))
resumed = {k: v.full_tensor() for k, v in net.state_dict().items()}
report["sharded_resume_equal"] = all(torch.equal(straight[k], resumed[k]) for k in straight)

# manual optimization under ddp on nccl: accumulate 4 micro-batches per step with no_backward_sync
class Manual(Model):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        stepping = (batch_idx + 1) % 4 == 0
        with self.no_backward_sync(enabled=not stepping):
            self.manual_backward(super().training_step(batch) / 4)
        if stepping:
            opt.step()
            opt.zero_grad()

trainer = prec.Trainer(accelerator="gpu", strategy="ddp", devices=world, precision="bf16-mixed", max_epochs=1,
                       enable_progress_bar=False, logger=False, enable_checkpointing=False)
manual = Manual()
trainer.fit(manual, loader)
state = {k: v.cpu() for k, v in trainer.strategy.module_state_dict(manual).items()}
gathered = trainer.strategy.all_gather_object(state)
report["manual_ddp_replicas_identical"] = all(torch.equal(g[k], gathered[0][k]) for g in gathered for k in state)

# bf16-true master weights under fsdp: sharded save, resume, equal to the uninterrupted run
for mode in ("fp32", "kahan"):
    def fit(epochs, ckpt=None):
        trainer = prec.Trainer(accelerator="gpu", strategy="fsdp", devices=world, precision="bf16-true",
                               precision_options={"master_weights": mode}, max_epochs=epochs,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
        model = Model()
        trainer.fit(model, loader, ckpt_path=ckpt)
        return trainer, {k: v.cpu() for k, v in trainer.strategy.module_state_dict(model).items()}
    _, straight = fit(2)
    first, _ = fit(1)
    first.save_checkpoint(scratch / f"master_{mode}")
    _, resumed = fit(2, scratch / f"master_{mode}")
    report[f"fsdp_master_{mode}_resume_equal"] = all(torch.equal(straight[k], resumed[k]) for k in straight)
if rank == 0:
    results_file.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
ok = report["ddp"]["replicas_identical"] and report["fsdp"]["replicas_identical"]
ok = ok and report["allreduce_calls_per_step_with_accumulation_4"] == 1 and report["sharded_resume_equal"]
ok = ok and report["manual_ddp_replicas_identical"]
ok = ok and report["fsdp_master_fp32_resume_equal"] and report["fsdp_master_kahan_resume_equal"]
sys.exit(0 if ok else 1)
PY
NPROC="$GPUS"
echo "== torchrun over $NPROC GPU(s), nccl"
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" "$SCRATCH/check.py" "$RESULTS" "$SCRATCH"
