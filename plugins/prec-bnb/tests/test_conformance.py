"""The conformance kit on every bitsandbytes pair that runs on the CPU.

Every check passes but one, by design: a Linear built under ``module_init_context`` is quantized as it is built,
so its weight is uint8/int8, not ``param_dtype`` (float32). The kit's models keep their last layer (``2``, and the
Trainer check's ``layer``) float32 through ``ignore_modules``, as a fine-tuned model keeps its head: with every
weight frozen, its fit checks would have only biases to train.
"""

from __future__ import annotations

import pytest

import prec
from prec.testing import check_precision, precision_pairs

CPU_NAMES = ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-fp4-dq", "bnb-int8"]
KIT_OPTIONS = {"ignore_modules": ["2", "layer"]}


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize("compute_dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("name", CPU_NAMES)
def test_conformance_on_cpu(name: str, compute_dtype: str) -> None:
    """Every check passes: the kit accepts the declared storage of frozen weights (``produced_param_dtypes``)."""
    check_precision(name, "cpu", options={**KIT_OPTIONS, "compute_dtype": compute_dtype})


@pytest.mark.filterwarnings("ignore::prec.PerformanceWarning")
@pytest.mark.parametrize("name", CPU_NAMES)
def test_conformance_with_every_linear_frozen(name: str) -> None:
    """Without kept layers every Linear is frozen: the kit trains an adapter beside them, as a user would."""
    check_precision(name, "cpu")


def test_every_name_is_registered_on_cpu_and_cuda() -> None:
    import prec_bnb

    pairs = set(precision_pairs("cpu"))
    assert {(name, "cpu") for name in CPU_NAMES} <= pairs and ("bnb-int8-training", "cpu") not in pairs
    assert set(prec_bnb.NAMES) == {*CPU_NAMES, "bnb-int8-training"}
    registry = prec.get_registry()
    assert all((name, "cuda") in registry.precisions for name in prec_bnb.NAMES)


def test_int8_training_says_why_not_on_cpu() -> None:
    assert ("bnb-int8-training", "cpu") not in prec.get_registry().precisions  # never listed where it cannot run
    with pytest.raises(prec.UnsupportedPrecisionError, match="no CPU kernel.*precision='bnb-int8'"):
        prec.Trainer(accelerator="cpu", precision="bnb-int8-training")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"compute_dtype": "bfloat16"}, "compute_dtype='bfloat16' must be one of 'bf16', 'fp16', 'fp32'"),
        ({"ignore_modules": "head"}, "ignore_modules='head' must be a list of module names"),
        ({"ignore_module": ["head"]}, "Did you mean 'ignore_modules'"),
    ],
)
def test_bad_options_name_the_argument(options: dict, match: str) -> None:
    with pytest.raises(prec.ConfigurationError, match=match):
        prec.get_precision("bnb-nf4", "cpu", **options)
