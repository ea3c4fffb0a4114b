"""Specification of byte sizes: parse_bytes and format_bytes."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distorch.errors import AllocationError, DistorchError
from distorch.units import MAX_BYTES, parse_bytes, format_bytes


@pytest.mark.parametrize(
    "text, expected",
    [("1b", 1), ("1kb", 10**3), ("1mb", 10**6), ("1gb", 10**9), ("1tb", 10**12)],
)
def test_decimal_units_are_powers_of_1000(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("1kib", 2**10), ("1mib", 2**20), ("1gib", 2**30), ("1tib", 2**40)],
)
def test_binary_units_are_powers_of_1024(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["8GB", "8Gb", "8gB", "8gb"])
def test_units_are_case_insensitive(text):
    assert parse_bytes(text) == 8 * 10**9


def test_decimal_numbers_are_exact():
    assert parse_bytes("2.5gb") == 2_500_000_000
    assert parse_bytes("0.1kb") == 100


def test_result_is_rounded_half_to_even_to_whole_bytes():
    assert parse_bytes("0.5b") == 0
    assert parse_bytes("1.5b") == 2
    assert parse_bytes("1.4b") == 1


def test_exponent_notation_is_accepted():
    assert parse_bytes("1e3mb") == 10**9


def test_whitespace_around_and_between_number_and_unit_is_tolerated():
    assert parse_bytes("  1.5 GiB\t") == 1_610_612_736


def test_bare_number_is_not_bytes():
    with pytest.raises(AllocationError, match="missing unit") as info:
        parse_bytes("8")
    assert (info.value.token, info.value.position) == ("8", 0)


def test_unknown_unit_names_token_and_position():
    with pytest.raises(AllocationError) as info:
        parse_bytes(" 8gx")
    assert (info.value.token, info.value.position) == ("gx", 2)
    assert "unknown unit 'gx' at position 2" in str(info.value)
    assert "kib, mib, gib, tib" in str(info.value)


def test_negative_size_is_rejected():
    with pytest.raises(AllocationError, match="negative"):
        parse_bytes("-1gb")


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaNgb", "infinity"])
def test_non_finite_size_is_rejected(text):
    with pytest.raises(AllocationError, match="not a finite number"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["10000000000tb", "1e30b", "1e999999999999999999gb"])
def test_size_beyond_int64_overflows(text):
    with pytest.raises(AllocationError, match="overflows"):
        parse_bytes(text)


def test_largest_size_is_int64_max():
    assert parse_bytes(f"{MAX_BYTES}b") == MAX_BYTES


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_size_is_rejected(text):
    with pytest.raises(AllocationError, match="empty"):
        parse_bytes(text)


def test_parse_error_is_a_value_error_and_a_distorch_error():
    with pytest.raises(ValueError) as info:
        parse_bytes("lots")
    assert isinstance(info.value, DistorchError)


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0b"),
        (1, "1b"),
        (1536, "1536b"),
        (1000, "1kb"),
        (1024, "1kib"),
        (8 * 10**9, "8gb"),
        (8 * 2**30, "8gib"),
        (2500 * 10**6, "2500mb"),
        (3 * 10**12, "3tb"),
        (2**40, "1tib"),
    ],
)
def test_format_uses_largest_exact_unit(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8gb"])
def test_format_rejects_anything_but_non_negative_ints(bad):
    with pytest.raises(ValueError):
        format_bytes(bad)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(min_value=0, max_value=MAX_BYTES))
def test_format_then_parse_is_identity(n):
    assert parse_bytes(format_bytes(n)) == n
