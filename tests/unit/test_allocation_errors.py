"""Specification of allocation-string errors: each names the bad token, its position, and a fix."""
import pytest

from distorch.allocation import MAX_TEXT_CHARS, parse_allocation
from distorch.errors import AllocationError, DistorchError


def error_for(text):
    with pytest.raises(AllocationError) as info:
        parse_allocation(text)
    return info.value


def assert_points_at(text, token, position, fragment):
    error = error_for(text)
    assert (error.token, error.position) == (token, position)
    assert f"{token!r} at position {position}" in str(error)
    assert fragment in str(error)
    return error


def test_message_quotes_string_token_position_and_fix():
    error = error_for("cuda:0,8gx;cpu,*")
    assert str(error) == (
        "allocation string 'cuda:0,8gx;cpu,*': unknown unit 'gx' at position 8; "
        "use b, kb, mb, gb, tb (decimal) or kib, mib, gib, tib (binary)"
    )


def test_allocation_error_is_a_value_error_and_a_distorch_error():
    error = error_for("")
    assert isinstance(error, ValueError) and isinstance(error, DistorchError)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_or_blank_string(text):
    assert_points_at(text, text, 0, "empty allocation")


def test_missing_comma():
    assert_points_at("cuda:0,8gb; cpu *", "cpu *", 12, "missing ','")


def test_second_comma_in_entry():
    assert_points_at("cuda:0,8gb,4gb", ",", 10, "one ',' per entry")


def test_missing_device():
    assert_points_at(" ,8gb", ",", 1, "missing device")


def test_missing_amount():
    assert_points_at("cpu, ", ",", 3, "missing amount")


def test_empty_entry_between_semicolons():
    assert_points_at("cuda:0,8gb; ;cpu,*", ";", 12, "empty entry")


def test_leading_semicolon_is_an_empty_entry():
    assert_points_at(";cpu,*", ";", 0, "empty entry")


def test_two_trailing_semicolons_leave_an_empty_entry():
    assert_points_at("cpu,*;;", ";", 6, "empty entry")


def test_unknown_unit():
    assert_points_at("cuda:0,8 zb;cpu,*", "zb", 9, "unknown unit")


def test_unknown_device_type():
    assert_points_at("cuda:0,1gb;gpu,*", "gpu", 11, "unknown device")


@pytest.mark.parametrize("device", ["cuda:-1", "cuda:01", "cuda:x", "cuda:128", "cu da", "cpu:1", "cuda\u0663"])
def test_malformed_device_name(device):
    assert_points_at(f"{device},1gb", device, 0, "unknown device")


def test_negative_amount():
    assert_points_at("cuda:0,-8gb;cpu,*", "-8", 7, "negative")


@pytest.mark.parametrize("amount", ["nan", "NaN%", "inf", "-inf", "+Infinity", "infgb"])
def test_non_finite_amount(amount):
    assert_points_at(f"cpu,{amount}", amount, 4, "not a finite number")


def test_ratios_summing_to_zero():
    assert_points_at("cuda:0,0%;cpu,0%", "0%", 14, "sum to zero")


def test_ratios_above_100_percent_with_wildcard():
    assert_points_at("cuda:0,60%;cuda:1,50%;cpu,*", "50%", 18, "exceed 100%")


def test_fraction_above_one():
    assert_points_at("cuda:0,1.5;cpu,*", "1.5", 7, "fraction above 1")


def test_forgotten_unit_reads_as_fraction_above_one():
    assert_points_at("cuda:0,8;cpu,*", "8", 7, "add a unit")


def test_duplicate_device():
    assert_points_at("cuda:0,1gb;cpu,1gb;cpu,*", "cpu", 19, "duplicate device")


def test_duplicate_device_after_normalisation():
    assert_points_at("cuda,1gb;cuda:0,*", "cuda:0", 9, "canonical 'cuda:0'")


def test_two_wildcards():
    assert_points_at("cuda:0,*;cpu,*", "*", 13, "second wildcard")


def test_mixed_modes_name_the_entry():
    error = assert_points_at("cuda:0,8gb;cpu,25%", "25%", 15, "one mode")
    assert "'cpu'" in str(error)


def test_mixed_fraction_after_ratio():
    assert_points_at("cuda:0,25%;cuda:1,*;cpu,0.5", "0.5", 24, "fraction amount")


@pytest.mark.parametrize(
    "text, token, position", [("cpu,8gb$", "gb$", 5), ("cpu,$8gb", "$8gb", 4), ("cpu,8%%", "%%", 5)]
)
def test_garbage_characters(text, token, position):
    assert_points_at(text, token, position, "")


def test_unicode_digits_are_not_numbers():
    assert_points_at("cpu,\u0663gb", "\u0663gb", 4, "expected a number")


def test_control_characters_are_garbage():
    assert_points_at("cpu,8\x00gb", "\x00gb", 5, "unexpected characters")


def test_over_long_number():
    number = "1" + "0" * 40
    assert_points_at(f"cpu,{number}b", number, 4, "too long")


@pytest.mark.parametrize("amount", ["10000000000tb", "9223372036854775808b", "1e999999999999gb"])
def test_byte_amount_overflow(amount):
    assert_points_at(f"cpu,{amount}", amount, 4, "overflows")


def test_ratio_overflow_beyond_float_range():
    assert_points_at("cpu,1e999%", "1e999%", 4, "overflows")


def test_over_long_string():
    text = "cpu,*" + " " * MAX_TEXT_CHARS
    error = error_for(text)
    assert error.position == MAX_TEXT_CHARS and "too long" in str(error)
    assert len(str(error)) < 400  # huge input is shortened in the message


def test_non_string_input():
    with pytest.raises(AllocationError, match="expected a string"):
        parse_allocation(None)
