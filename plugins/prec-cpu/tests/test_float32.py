"""32-true means float32: TF32 off for the run, restored at teardown; tf32=True is the explicit opt-in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import prec
from prec.precision import Float32Precision
from prec.precision.tf32 import float32_math_settings

# Each case runs in a fresh interpreter: the flags are process-global, and torch refuses to read a legacy flag
# once the two generations of settings disagree.
SCRIPT = textwrap.dedent(
    """
    import torch, prec
    from prec.precision.tf32 import float32_math_settings
    b = torch.backends
    {prepare}
    before = float32_math_settings()
    precision = prec.get_precision("32-true", "cpu", **{options})
    precision.setup()
    during = float32_math_settings()
    precision.teardown(); precision.teardown()
    after = float32_math_settings()
    print(repr((before, during, after)))
    """
)


def _run(prepare: str = "", options: str = "{}") -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    code = SCRIPT.format(prepare=prepare, options=options)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr of dicts of strings


def test_32_true_turns_tf32_off_for_the_run_and_restores_it() -> None:
    before, during, after = _run()
    assert before["cudnn.allow_tf32"] is True  # torch's default: cuDNN convolutions in TF32
    assert during["cuda.matmul.allow_tf32"] is False and during["cudnn.allow_tf32"] is False
    assert during["float32_matmul_precision"] == "highest"
    assert after == before


def test_tf32_is_an_explicit_opt_in() -> None:
    before, during, after = _run(options="{'tf32': True}")
    assert during["cuda.matmul.allow_tf32"] is True and during["cudnn.allow_tf32"] is True
    assert during["float32_matmul_precision"] == "high"
    assert after == before


@pytest.mark.parametrize(
    "prepare",
    [
        "torch.set_float32_matmul_precision('medium'); b.cuda.matmul.allow_tf32 = True",
        "b.mkldnn.conv.fp32_precision = 'bf16'",
        "b.cuda.matmul.fp32_precision = 'tf32'; b.cudnn.rnn.fp32_precision = 'ieee'",  # unreadable legacy flags
    ],
)
def test_a_user_setting_is_restored_exactly(prepare: str) -> None:
    before, during, after = _run(prepare)
    assert during["cudnn.allow_tf32"] is False and during.get("mkldnn.conv.fp32_precision") in ("ieee", "none")
    assert after == before


def test_every_fp32_precision_setting_is_full_float32_during_the_run() -> None:
    code = (
        "import torch, prec, operator\nfrom prec.precision.tf32 import FP32_PRECISION_SETTINGS as S\n"
        "b = torch.backends\nb.mkldnn.rnn.fp32_precision = 'bf16'\np = prec.get_precision('32-true', 'cpu')\n"
        "p.setup()\nprint(*[operator.attrgetter(s)(b).fp32_precision for s in S])\np.teardown()\n"
        "print(b.mkldnn.rnn.fp32_precision)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    during, after = out.stdout.strip().splitlines()
    assert set(during.split()) <= {"ieee", "none"} and after == "bf16"


def test_legacy_flags_read_full_float32_during_the_run() -> None:
    code = (
        "import torch, prec\np = prec.get_precision('32-true', 'cpu')\np.setup()\n"
        "print(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)\np.teardown()\n"
        "print(torch.backends.cudnn.allow_tf32)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_setup_is_applied_once_and_teardown_without_setup_changes_nothing() -> None:
    before = float32_math_settings()
    precision = prec.get_precision("32-true", "cpu")
    assert isinstance(precision, Float32Precision) and not precision.tf32
    precision.teardown()
    assert float32_math_settings() == before
    precision.setup()
    precision.setup()
    precision.teardown()
    assert float32_math_settings() == before


def test_tf32_option_is_checked() -> None:
    with pytest.raises(prec.ConfigurationError, match="tf32='yes' must be True or False"):
        prec.get_precision("32-true", "cpu", tf32="yes")


def test_prec_list_shows_the_opt_in() -> None:
    registry = prec.get_registry()
    entry = registry.precisions[("32-true", "cpu")]
    assert "tf32" in entry.description.lower()


def test_float32_math_is_exact_float32_on_cpu() -> None:
    precision = prec.get_precision("32-true", "cpu")
    a, b = torch.randn(64, 64, dtype=torch.float64), torch.randn(64, 64, dtype=torch.float64)
    precision.setup()
    try:
        result = a.float() @ b.float()
    finally:
        precision.teardown()
    assert (result.double() - a.float().double() @ b.float().double()).abs().max() < 1e-4
