"""Precision names: canonical, legacy (with and without a warning) and everything else."""

from __future__ import annotations

import warnings

import pytest

import prec
from prec.names import CANONICAL_PRECISIONS, legacy_names, normalize_precision


@pytest.mark.parametrize("name", CANONICAL_PRECISIONS)
def test_canonical_names_map_to_themselves_silently(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert normalize_precision(name) == name


@pytest.mark.parametrize(("value", "expected"), [(16, "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed")])
def test_ambiguous_legacy_values_warn_and_name_the_canonical_string(value: object, expected: str) -> None:
    with pytest.warns(prec.LegacyPrecisionWarning, match=f"precision='{expected}'"):
        assert normalize_precision(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"), [(32, "32-true"), ("32", "32-true"), (64, "64-true"), ("64", "64-true"), (None, "32-true")]
)
def test_unambiguous_legacy_values_are_silent(value: object, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert normalize_precision(value) == expected  # type: ignore[arg-type]


def test_legacy_warning_points_at_the_callers_line() -> None:
    with pytest.warns(prec.LegacyPrecisionWarning) as record:
        normalize_precision("bf16")
    assert record[0].filename == __file__


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [
        ("bf16-mix", "bf16-mixed"),
        ("BF16-Mixed", "bf16-mixed"),
        ("16_true", "16-true"),
        ("32-mixed", None),
        (16.0, "16-mixed"),
        (32.0, "32-true"),
    ],
)
def test_unknown_values_list_valid_names_and_suggest(value: object, suggestion: str | None) -> None:
    with pytest.raises(prec.UnknownPrecisionError) as excinfo:
        normalize_precision(value)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert "bf16-mixed, bf16-true" in message  # the valid names are listed
    if suggestion:
        assert f"Did you mean {suggestion!r}?" in message


@pytest.mark.parametrize("value", [True, False, 12, 8, 0, -16, "", "fp16", object(), 16.5, [16], b"16"])
def test_everything_else_is_an_unknown_precision_error(value: object) -> None:
    with pytest.raises(prec.UnknownPrecisionError):
        normalize_precision(value)  # type: ignore[arg-type]


def test_unknown_precision_is_a_configuration_error_and_a_value_error() -> None:
    assert issubclass(prec.UnknownPrecisionError, prec.ConfigurationError)
    assert issubclass(prec.ConfigurationError, ValueError)
    assert issubclass(prec.UnsupportedPrecisionError, prec.ConfigurationError)


def test_plugin_registered_names_are_accepted() -> None:
    assert normalize_precision("fp8-mixed", known=["fp8-mixed"]) == "fp8-mixed"


def test_auto_is_reserved() -> None:
    assert normalize_precision("auto") == "auto"


def test_legacy_table_for_docs() -> None:
    table = legacy_names()
    assert table["16"] == "16-mixed" and table["'bf16'"] == "bf16-mixed" and table["64"] == "64-true"


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [
        ("fp16", "16-mixed"),
        ("float16", "16-mixed"),
        ("half", "16-mixed"),
        ("fp32", "32-true"),
        ("float32", "32-true"),
        ("double", "64-true"),
        ("bf16_mixed", "bf16-mixed"),
        ("bfloat16", "bf16-mixed"),
        ("float16-true", "16-true"),
        ("torch.float64", "64-true"),
    ],
)
def test_the_names_people_type_get_a_suggestion(value: str, suggestion: str) -> None:
    with pytest.raises(prec.UnknownPrecisionError, match=f"Did you mean '{suggestion}'"):
        normalize_precision(value)
