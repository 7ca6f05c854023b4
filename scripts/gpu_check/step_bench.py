"""A transformer training step at each precision, through prec's Precision API and through plain torch.

prec's side is the documented own-loop recipe (``get_precision``, ``convert_module``, ``forward_context``,
``backward``, ``optimizer_step``), which is what the Trainer calls per step without its loop around it; the raw
side is the torch recipe for the same numerics (autocast + GradScaler for 16-mixed, weights cast for -true, a
hand-written float32 master copy, torchao's ``convert_to_float8_training`` for fp8). Both use the same model,
batch, AdamW (fused on CUDA) and seed. Per mode it reports the median step time after warm-up (CUDA events on a
GPU, the host clock on a CPU), the peak memory allocated (GPU only) and the host-device synchronisations per step
(GPU only, counted with ``torch.cuda.set_sync_debug_mode("warn")`` after checking the count on known syncs).

    python scripts/gpu_check/step_bench.py --device cuda --out DIR
    python scripts/gpu_check/step_bench.py --device cpu --tiny --steps 2 --warmup 1 --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_report import render, slug

import prec


@dataclass(frozen=True)
class Mode:
    label: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    raw: str | None = None  # the raw torch recipe; None where torch has none


MODES = (
    Mode("32-true", "32-true", raw="float32"),
    Mode("16-mixed", "16-mixed", raw="float16 autocast + GradScaler"),
    Mode("bf16-mixed", "bf16-mixed", raw="bfloat16 autocast"),
    Mode("bf16-true", "bf16-true", raw="bfloat16 weights"),
    Mode("bf16-true master_weights=fp32", "bf16-true", {"master_weights": "fp32"}, "bfloat16 weights + float32 copy"),
    Mode("bf16-true master_weights=kahan", "bf16-true", {"master_weights": "kahan"}),
    Mode("bf16-true master_weights=stochastic", "bf16-true", {"master_weights": "stochastic"}),
    Mode("fp8-mixed", "fp8-mixed", raw="torchao convert_to_float8_training + bfloat16 autocast"),
)
#: Modes that may be missing on a GPU without failing the check: fp8 needs torchao and compute capability 8.9.
OPTIONAL_ON_CUDA = {"fp8-mixed"}


@dataclass(frozen=True)
class Size:
    width: int
    heads: int
    layers: int
    seq: int
    batch: int
    vocab: int


GPU_SIZE = Size(width=1024, heads=16, layers=8, seq=1024, batch=8, vocab=8192)
TINY_SIZE = Size(width=32, heads=2, layers=2, seq=16, batch=2, vocab=64)


class Block(torch.nn.Module):
    """Pre-norm attention and MLP; every matmul an ``nn.Linear`` (so fp8 conversion reaches all of them)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, w))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(torch.nn.Module):
    def __init__(self, size: Size) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(size.vocab, size.width)
        self.position = torch.nn.Parameter(0.02 * torch.randn(size.seq, size.width))
        self.blocks = torch.nn.Sequential(*(Block(size.width, size.heads) for _ in range(size.layers)))
        self.norm = torch.nn.LayerNorm(size.width)
        self.head = torch.nn.Linear(size.width, size.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position)))


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def new_model(size: Size, device: torch.device) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(size).to(device)


def new_optimizer(params: Any, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")


# -- the two loops: each returns a step function ----------------------------------------------------------------
def prec_step(mode: Mode, size: Size, device: torch.device) -> tuple[Callable[..., None], Callable[[], None]]:
    precision = prec.get_precision(mode.precision, device.type, **mode.options)
    precision.setup()
    model = precision.convert_module(new_model(size, device))
    precision.setup_module(model)
    optimizer = new_optimizer(model.parameters(), device)
    precision.setup_optimizer(optimizer)

    def step(tokens: torch.Tensor, targets: torch.Tensor) -> None:
        with precision.forward_context():
            logits = model(precision.convert_input(tokens))
        precision.backward(loss_of(precision.convert_output(logits), targets), model)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    return step, precision.teardown


def raw_step(mode: Mode, size: Size, device: torch.device) -> tuple[Callable[..., None], Callable[[], None]]:
    model = new_model(size, device)
    autocast = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "fp8-mixed": torch.bfloat16}
    dtype = autocast.get(mode.precision)
    if mode.precision == "bf16-true":
        model.to(torch.bfloat16)
    if mode.precision == "fp8-mixed":
        if device.type != "cuda":
            raise NotImplementedError("torchao's Float8Linear follows CUDA autocast only: no raw recipe on a cpu")
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        def convertible(layer: torch.nn.Module, name: str) -> bool:  # prec-torchao's default: every Linear but the
            return name != "head" and all(n % 16 == 0 for n in layer.weight.shape)  # head, dimensions of 16

        convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("tensorwise"),
                                   module_filter_fn=convertible)  # fmt: skip
    params = list(model.parameters())
    masters = [p.detach().float().clone() for p in params] if mode.options.get("master_weights") == "fp32" else None
    optimizer = new_optimizer(masters if masters is not None else params, device)
    scaler = torch.amp.GradScaler(device.type) if mode.precision == "16-mixed" else None

    def step(tokens: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(tokens)
        loss = loss_of(logits, targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        elif masters is not None:
            loss.backward()
            for master, param in zip(masters, params, strict=True):
                master.grad = param.grad.float()
            optimizer.step()
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
            model.zero_grad(set_to_none=True)
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, lambda: None


# -- measuring -------------------------------------------------------------------------------------------------
@contextmanager
def counting_syncs(device: torch.device) -> Iterator[list[int]]:
    """Counts torch's "synchronizing CUDA operation" warnings inside the block (one per synchronising call)."""
    count = [0]
    if device.type != "cuda":
        yield count
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield count
    finally:
        torch.cuda.set_sync_debug_mode("default")
    count[0] = sum("synchroniz" in str(w.message) for w in caught)


def sync_counter_works(device: torch.device) -> bool:
    """The counter must see exactly three syncs in three ``.item()`` calls and none in queued device work."""
    if device.type != "cuda":
        return False
    x = torch.ones(64, 64, device=device)
    with counting_syncs(device) as quiet:
        for _ in range(3):
            x = x @ x / 64
    with counting_syncs(device) as loud:
        for _ in range(3):
            x.sum().item()
    torch.cuda.synchronize(device)
    return quiet[0] == 0 and loud[0] == 3


def measure(make: Callable[..., Any], mode: Mode, size: Size, device: torch.device, args: argparse.Namespace,
            count_syncs: bool) -> dict[str, Any]:  # fmt: skip
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(size.vocab, (size.batch, size.seq), generator=generator).to(device)
    targets = torch.randint(size.vocab, (size.batch, size.seq), generator=generator).to(device)
    step, teardown = make(mode, size, device)
    try:
        for _ in range(args.warmup):
            step(tokens, targets)
        if cuda:
            torch.cuda.synchronize(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(args.steps)]  # fmt: skip
        clock: list[float] = []
        with counting_syncs(device if count_syncs else torch.device("cpu")) as syncs:
            for index in range(args.steps):
                if cuda:
                    events[index][0].record()
                    step(tokens, targets)
                    events[index][1].record()
                else:
                    start = time.perf_counter()
                    step(tokens, targets)
                    clock.append(1000 * (time.perf_counter() - start))
        if cuda:
            torch.cuda.synchronize(device)
            clock = [begin.elapsed_time(end) for begin, end in events]
    finally:
        teardown()
    result = {
        "step_ms": statistics.median(clock),
        "step_ms_min": min(clock),
        "peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None,
        "syncs_per_step": syncs[0] / args.steps if count_syncs else None,
    }
    del step
    gc.collect()
    return result


def run_mode(mode: Mode, size: Size, device: torch.device, args: argparse.Namespace, syncs: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"mode": mode.label, "precision": mode.precision, "options": mode.options}
    row["prec"] = measure(prec_step, mode, size, device, args, syncs)
    row["raw_recipe"] = mode.raw
    row["raw"] = None
    if mode.raw is not None:
        try:
            row["raw"] = measure(raw_step, mode, size, device, args, syncs)
        except NotImplementedError as reason:
            row["raw_recipe"] = f"none here: {reason}"
    return row


def selectable(mode: Mode, device: torch.device) -> str | None:
    """Why prec cannot run ``mode`` here (the installed plugins decide), or None."""
    try:
        prec.get_precision(mode.precision, device.type, **mode.options)
    except (prec.UnsupportedPrecisionError, prec.UnknownPrecisionError, prec.AcceleratorUnavailableError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="width 32, 2 layers, 16 tokens: a smoke test")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per mode (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", nargs="+", choices=[mode.label for mode in MODES], metavar="MODE")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and Markdown results")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("need --steps >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the benchmark needs one (use --device cpu for a smoke test)")
        return 1
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    size = TINY_SIZE if args.tiny else GPU_SIZE
    warnings.simplefilter("ignore", prec.PerformanceWarning)  # bf16 without native support, emulated fp8: known
    syncs = sync_counter_works(device)
    name = device_name(device)
    print(f"{name}: {size}, {args.warmup} warm-up + {args.steps} steps, torch {torch.__version__}, sync counter"
          f" {'verified' if syncs else 'not available'}", flush=True)  # fmt: skip
    record: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "prec": prec.__version__, "size": vars(size),
        "steps": args.steps, "warmup": args.warmup, "loop": "prec Precision API in a plain loop",
        "sync_counter_verified": syncs, "results": [], "skipped": [], "errors": [],
    }  # fmt: skip
    failed = False
    for mode in MODES:
        if args.modes and mode.label not in args.modes:
            continue
        reason = selectable(mode, device)
        if reason is not None:
            record["skipped"].append({"mode": mode.label, "reason": reason})
            failed |= device.type == "cuda" and mode.label not in OPTIONAL_ON_CUDA
            print(f"  {mode.label}: skipped ({reason})", flush=True)
            continue
        try:
            row = run_mode(mode, size, device, args, syncs)
        except Exception as error:  # noqa: BLE001 - one broken mode must not hide the others' numbers
            record["errors"].append({"mode": mode.label, "error": f"{type(error).__name__}: {error}"})
            failed = True
            print(f"  {mode.label}: FAILED {type(error).__name__}: {error}", flush=True)
            continue
        record["results"].append(row)
        raw = row["raw"]["step_ms"] if row["raw"] else None
        print(f"  {mode.label}: prec {row['prec']['step_ms']:.3f} ms" + (f", raw {raw:.3f} ms" if raw else ""),
              flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"step_bench_{slug(name)}"
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    table = render(record)
    (args.out / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"results written to {args.out / stem}.json and .md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
