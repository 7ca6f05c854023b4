"""Bytes per parameter of the quantized Linear layers of every prec-bnb mode, measured on real bitsandbytes layers.

Builds ``--layers`` Linear(``--width``, ``--width``) layers under ``module_init_context`` (quantized as they are
built) and counts every byte the layer's state dict holds for its weight: the packed weight and its quantization
state (absmax scales, nested scales, code books), without the float32 bias. Writes a Markdown table to
``benchmarks/results.md`` next to this file and prints it.

    python plugins/prec-bnb/benchmarks/bytes_per_param.py --width 4096 --layers 4
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import prec
import prec_bnb

MODES = ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-fp4-dq", "bnb-int8"]


def measure(name: str, width: int, layers: int) -> tuple[float, float]:
    """(bytes per weight parameter, seconds to build) for ``layers`` square layers of ``width``."""
    precision = prec.get_precision(name, "cpu")
    start = time.perf_counter()
    with precision.module_init_context():
        model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    seconds = time.perf_counter() - start
    state = model.state_dict()
    weight_bytes = sum(
        tensor.numel() * tensor.element_size() for key, tensor in state.items() if not key.endswith(".bias")
    )
    return weight_bytes / (layers * width * width), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    rows = [
        "| precision | bytes / weight parameter | vs float32 | build time |",
        "|---|---|---|---|",
        "| 32-true (torch.nn.Linear) | 4.000 | 1.00x | - |",
    ]
    for name in MODES:
        per_param, seconds = measure(name, args.width, args.layers)
        rows.append(f"| {name} | {per_param:.4f} | {4 / per_param:.2f}x smaller | {seconds:.2f} s |")
    header = (
        f"{args.layers} x Linear({args.width}, {args.width}) built under module_init_context on the CPU;"
        f" bitsandbytes {prec_bnb.bitsandbytes_version()}, torch {torch.__version__}, {platform.machine()}."
        " Bytes: the packed weight and its quantization state from the state dict (biases excluded)."
    )
    text = header + "\n\n" + "\n".join(rows) + "\n"
    (Path(__file__).parent / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
