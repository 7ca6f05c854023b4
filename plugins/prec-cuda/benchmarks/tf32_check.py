"""32-true is float32 on a GPU; precision_options={"tf32": True} is TF32. A large matmul and a convolution under
each, against a float64 reference: 32-true's error must be float32-sized and TF32's larger (on Ampere or newer)
and TF32 faster. Exits 0 without a GPU. Writes $OUT/tf32_check.json when OUT is set."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import prec


def timed(function, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    torch.manual_seed(0)
    a, b = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")
    image, kernel = torch.randn(32, 64, 128, 128, device="cuda"), torch.randn(128, 64, 3, 3, device="cuda")
    exact = (a.double() @ b.double()).float()
    conv_exact = torch.nn.functional.conv2d(image.double(), kernel.double()).float()
    result: dict[str, dict[str, float]] = {}
    for label, options in (("32-true", {}), ("32-true tf32", {"tf32": True})):
        precision = prec.get_precision("32-true", "cuda", **options)
        precision.setup()
        try:
            error = ((a @ b) - exact).abs().max().item()
            conv_error = (torch.nn.functional.conv2d(image, kernel) - conv_exact).abs().max().item()
            seconds = timed(lambda: a @ b)
        finally:
            precision.teardown()
        result[label] = {"matmul_max_error": error, "conv_max_error": conv_error, "matmul_ms": 1000 * seconds}
        print(label, result[label])
    if "OUT" in os.environ:
        Path(os.environ["OUT"], "tf32_check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        print("pre-Ampere GPU: no TF32 to compare")
        return 0
    full, tf32 = result["32-true"], result["32-true tf32"]
    ok = (
        tf32["matmul_max_error"] > 10 * full["matmul_max_error"]
        and tf32["conv_max_error"] > 10 * full["conv_max_error"]
        and tf32["matmul_ms"] < full["matmul_ms"]
    )
    print("32-true is float32 and TF32 is an opt-in:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
