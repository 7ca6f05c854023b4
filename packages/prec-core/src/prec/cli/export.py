"""``prec export CKPT --precision bf16|fp16|fp32|int8|int4``: a checkpoint's weights for inference, as safetensors.

The weights start from their full value: a bf16-true checkpoint with ``master_weights`` gives its float32 copies
(or weight + compensation), never the rounded 16-bit weights, and are then cast to bf16/fp16/fp32 or quantized
weight-only to int8/int4 through torchao (:mod:`prec.checkpoint.quantize`; the file layout is in
:mod:`prec.checkpoint.export`). Beside the file, ``<output>.json`` records the dtype of every stored tensor, the
file's sha256 and, given ``--batch`` (with ``--model`` to rebuild the module), the drift of the outputs of the
weights as stored against the float32 model's. torch is imported when the command runs, not when ``prec`` starts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from prec._warnings import warn
from prec.errors import CheckpointError, ConfigurationError, PrecWarning

if TYPE_CHECKING:
    import torch

__all__ = ["EXPORT_DTYPES", "EXPORT_PRECISIONS", "export_checkpoint", "export_command", "output_drift"]

#: The plain export precisions and the name of their torch dtype (torch is imported only when a command runs).
EXPORT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: Every ``--precision`` value.
EXPORT_PRECISIONS = (*EXPORT_DTYPES, "int8", "int4")


def export_checkpoint(
    checkpoint_path: str | Path,
    precision: str,
    output: str | Path | None = None,
    model: str | None = None,
    batch: str | None = None,
    group_size: int = 32,
) -> dict[str, Any]:
    """Write the export and its ``.json`` record; returns the record. ``model`` and ``batch`` are
    ``package.module:function`` specs (see the command's help)."""
    import torch

    from prec.checkpoint.effective import effective_float32
    from prec.checkpoint.export import export_metadata, write_export
    from prec.checkpoint.io import read_checkpoint

    if precision not in EXPORT_PRECISIONS:
        raise ConfigurationError(f"--precision {precision!r} is not one of {', '.join(EXPORT_PRECISIONS)}.")
    if batch is not None and model is None:
        raise ConfigurationError("--batch needs --model: the drift is measured by running the rebuilt module.")
    if precision not in EXPORT_DTYPES and model is None:
        raise ConfigurationError(
            f"--precision {precision} needs --model: which weights belong to Linear layers (the ones quantized)"
            " is known only from the module."
        )
    source = Path(checkpoint_path)
    target = Path(output) if output is not None else source.with_suffix(f".{precision}.safetensors")
    checkpoint = read_checkpoint(source)
    module = _build_module(model) if model is not None else None
    order = [name for name, _ in module.named_parameters()] if module is not None else None
    values = effective_float32(checkpoint, order)
    skipped = sorted(name for name, value in values.items() if not isinstance(value, torch.Tensor))
    values = {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}
    reference = _reference(module, values) if module is not None else None
    quantized: dict[str, Any] = {}
    left_out: list[str] = []
    if precision in EXPORT_DTYPES:
        dtype = getattr(torch, EXPORT_DTYPES[precision])
        tensors = {name: value.to(dtype) if value.is_floating_point() else value for name, value in values.items()}
    else:
        from prec.checkpoint.quantize import quantize_linears

        assert reference is not None  # --model is required above
        quantized, left_out = quantize_linears(copy.deepcopy(reference), precision, group_size)
        tensors = {name: value for name, value in values.items() if name not in quantized}
        if not quantized:
            warn(
                f"--precision {precision}: no Linear weight was quantized; the file holds float32 weights.", PrecWarning
            )
    sha256 = write_export(target, tensors, quantized, precision)
    saved_precision = checkpoint.get("precision") or {}
    record: dict[str, Any] = {
        "file": str(target),
        "bytes": target.stat().st_size,
        "sha256": sha256,
        "precision": precision,
        "checkpoint": str(source),
        "checkpoint_precision": saved_precision.get("name"),
        "master_weights": (checkpoint.get("precision_state") or {}).get("master_weights"),
        "dtypes": export_metadata(target)["dtypes"],
        "quantized": {name: weight.scheme for name, weight in quantized.items()},
        "left_unquantized": left_out,
        "skipped_non_tensors": skipped,
        "model": model,
        "batch": batch,
        "drift": None,
    }
    if batch is not None and reference is not None:
        record["drift"] = measure_export_drift(target, reference, _call(batch, "--batch"), precision)
    Path(f"{target}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def measure_export_drift(path: str | Path, reference: torch.nn.Module, batch: Any, precision: str) -> dict[str, float]:
    """The drift of the outputs of the weights stored in ``path`` against ``reference`` (the float32 module) on
    ``batch``: the exported weights are loaded into a copy of ``reference`` (16-bit: the copy and the batch's
    floating tensors in that dtype; int8/int4: the dequantized float32 weights)."""
    import torch

    from prec.checkpoint.export import read_export
    from prec.numerics.measure import cast_batch

    state, _ = read_export(path)
    exported = copy.deepcopy(reference)
    dtype = getattr(torch, EXPORT_DTYPES.get(precision, "float32"))
    exported.to(dtype).load_state_dict(state, strict=True)
    with torch.no_grad():
        expected = _forward(reference, batch)
        actual = _forward(exported, cast_batch(batch, dtype))
    return output_drift(expected, actual)


def output_drift(expected: Any, actual: Any) -> dict[str, float]:
    """``max_abs_error``: the largest ``|actual - expected|`` over every floating output tensor;
    ``max_rel_error``: that divided by the largest ``|expected|`` (so an output near zero cannot blow it up)."""
    pairs = list(zip(_floating(expected), _floating(actual), strict=True))
    if not pairs:
        raise ConfigurationError("the model's output holds no floating-point tensor to compare.")
    error = max(float((a.double() - e.double()).abs().max()) for e, a in pairs)
    scale = max(float(e.double().abs().max()) for e, _ in pairs)
    relative = error / scale if scale else (0.0 if error == 0 else float("inf"))
    return {"max_abs_error": error, "max_rel_error": relative}


# -- the command ----------------------------------------------------------------------------------------------
@click.command(
    "export",
    help="Write CHECKPOINT's weights for inference in a precision, as safetensors with a .json record (dtypes,"
    " sha256, drift). bf16/fp16/fp32 cast the full-precision weights (a bf16-true checkpoint's master_weights"
    " included); int8/int4 quantize Linear weights with torchao (weight-only, needs --model). --model"
    " package.module:function returns the nn.Module (built like the trained one); --batch package.module:function"
    " returns the input of its forward (a tensor, a tuple of positional arguments or a dict of keyword arguments),"
    " on which the outputs are compared with the float32 model's.",
)
@click.argument("checkpoint", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--precision", "precision", required=True, type=click.Choice(EXPORT_PRECISIONS))
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: CHECKPOINT.<precision>.safetensors"
)
@click.option("--model", "model", help="package.module:function returning the nn.Module.")
@click.option("--batch", "batch", help="package.module:function returning the forward's input.")
@click.option("--group-size", type=int, default=32, show_default=True, help="int4: input columns per scale.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON object.")
def export_command(
    checkpoint: Path,
    precision: str,
    output: Path | None,
    model: str | None,
    batch: str | None,
    group_size: int,
    as_json: bool,
) -> None:
    from prec.cli._reporting import reported

    try:
        with reported():
            record = export_checkpoint(checkpoint, precision, output, model, batch, group_size)
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from error
    except CheckpointError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(record) if as_json else render(record))


def render(record: dict[str, Any]) -> str:
    """What ``prec export`` prints: the file, its sha256, the dtypes and the drift."""
    counts: dict[str, int] = {}
    for dtype in record["dtypes"].values():
        counts[dtype] = counts.get(dtype, 0) + 1
    source = f"{record['checkpoint']} ({record['checkpoint_precision'] or 'precision not recorded'}"
    source += f", master_weights={record['master_weights']!r})" if record["master_weights"] else ")"
    lines = [
        f"wrote {record['file']} ({record['bytes']:,} bytes, {record['precision']}) from {source}",
        f"sha256: {record['sha256']}",
        "tensors: " + ", ".join(f"{count} {dtype}" for dtype, count in sorted(counts.items())),
    ]
    if record["quantized"]:
        lines.append(f"quantized weight-only: {len(record['quantized'])} Linear weights")
    if record["left_unquantized"]:
        lines.append(f"left in float32 (group size does not divide them): {', '.join(record['left_unquantized'])}")
    if record["skipped_non_tensors"]:
        lines.append(f"not exported (not tensors): {', '.join(record['skipped_non_tensors'])}")
    drift = record["drift"]
    if drift is not None:
        lines.append(
            f"output drift against float32: max abs {drift['max_abs_error']:.3g},"
            f" max rel {drift['max_rel_error']:.3g} (of the largest output)"
        )
    lines.append(f"record: {record['file']}.json")
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------------------------------
def _call(spec: str, label: str) -> Any:
    """Import ``package.module:function`` (the rule of ``prec bench``'s models) and call it."""
    from prec.cli.bench_models import resolve_model

    if ":" not in spec:
        raise ConfigurationError(f"{label} {spec!r} is not 'package.module:function'.")
    factory: Callable[[], Any] = resolve_model(spec, label=label)
    return factory()


def _build_module(spec: str) -> torch.nn.Module:
    import torch

    from prec.cli.bench_models import resolve_model

    built = resolve_model(spec, label="--model")()
    if isinstance(built, tuple) and built and isinstance(built[0], torch.nn.Module):
        built = built[0]  # a (module, batches) factory of `prec bench`
    if not isinstance(built, torch.nn.Module):
        raise ConfigurationError(f"--model {spec!r} returned {type(built).__name__}, not a torch.nn.Module.")
    return built


def _reference(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``module`` in float32 holding the checkpoint's full-precision weights (a mismatch is the checkpoint's)."""
    module = module.float().eval()
    try:
        module.load_state_dict(values, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint does not fit the module of --model: {error}") from error
    return module


def _forward(module: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def _floating(value: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach().float()] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [tensor for key in value for tensor in _floating(value[key])]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _floating(item)]
    return []
