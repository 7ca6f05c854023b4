from __future__ import annotations

import pytest
import torch

import prec
from prec.numerics import FORMATS, PRECISION_FORMATS, formats_for_precision, parse_format, parse_formats


def test_formats_carry_their_ranges() -> None:
    fp16, bf16, e4m3, e5m2 = parse_formats(["fp16", "bf16", "e4m3", "e5m2"])
    assert (fp16.max, fp16.smallest_normal, fp16.smallest_subnormal, fp16.mantissa_bits) == (
        65504.0,
        2.0**-14,
        2.0**-24,
        10,
    )
    assert bf16.mantissa_bits == 7 and bf16.smallest_normal == torch.finfo(torch.float32).tiny
    assert (e4m3.max, e4m3.smallest_normal, e4m3.smallest_subnormal, e4m3.mantissa_bits) == (448.0, 2.0**-6, 2.0**-9, 3)
    assert (e5m2.max, e5m2.mantissa_bits) == (57344.0, 2)
    assert e4m3.scaled and e5m2.scaled and not fp16.scaled and not bf16.scaled


def test_aliases_dtypes_and_order() -> None:
    parsed = parse_formats(["float16", torch.bfloat16, "float8_e4m3fn", "torch.float8_e5m2", "FP16"])
    assert [fmt.name for fmt in parsed] == ["fp16", "bf16", "e4m3", "e5m2"]
    assert parse_formats("half") == (FORMATS["fp16"],)
    assert parse_format("double").dtype == torch.float64


def test_unknown_format_names_the_argument_and_the_accepted_names() -> None:
    with pytest.raises(prec.ConfigurationError, match=r"targets: 'fp12'.*Accepted: fp64, fp32, fp16, bf16, e4m3"):
        parse_formats(["fp16", "fp12"], argument="targets")
    with pytest.raises(prec.ConfigurationError, match="Did you mean 'e4m3'"):
        parse_format("e4m3n")
    with pytest.raises(prec.ConfigurationError, match="formats is empty"):
        parse_formats([])
    with pytest.raises(prec.ConfigurationError, match="must be a list"):
        parse_formats(3)  # type: ignore[arg-type]


def test_precision_names_map_to_their_formats() -> None:
    assert formats_for_precision("16-mixed").forward == "fp16"
    assert formats_for_precision("bf16-true").weights == "bf16"
    fp8 = formats_for_precision("fp8-mixed")
    assert (fp8.forward, fp8.gradients, fp8.weights, fp8.mixed) == ("e4m3", "e5m2", "fp32", True)
    assert formats_for_precision("64-true").forward == "fp64"
    assert set(PRECISION_FORMATS) >= {"16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true", "64-true"}
    with pytest.raises(prec.ConfigurationError, match=r"precision='bf16-mixd'.*Did you mean 'bf16-mixed'"):
        formats_for_precision("bf16-mixd")


def test_rounding_scales_fp8_per_tensor_and_casts_16_bit_plainly() -> None:
    x = torch.tensor([1000.0, 1.0, -3.0, 0.0])
    scaled = FORMATS["e4m3"].round(x)
    assert scaled[0].item() == pytest.approx(1000.0, rel=1e-6) and scaled[3] == 0.0  # amax maps onto 448 and back
    assert torch.allclose(scaled, x, rtol=2.0**-4)
    assert FORMATS["e4m3"].unscaled().round(x)[0] == 448.0  # saturates, as torchao casts
    assert torch.isinf(FORMATS["fp16"].round(torch.tensor([1e5])))[0]
    assert FORMATS["e4m3"].round(torch.zeros(3)).eq(0).all()  # an all-zero tensor gets a finite scale
    assert FORMATS["bf16"].round(torch.tensor([1.0 + 2.0**-9])).item() == 1.0
