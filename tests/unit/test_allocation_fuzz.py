"""Fuzzing the allocation parser: whatever the input, only AllocationError escapes, errors point at
real input, and every accepted allocation survives format -> parse unchanged.

About 13,000 generated strings in all; derandomized so CI sees the same cases every run.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distorch.allocation import Allocation, AllocationEntry, parse_allocation
from distorch.errors import AllocationError
from distorch.units import MAX_BYTES, UNITS

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    "cuda:0,8gb;cuda:1,4gb;cpu,*",
    "cuda:0,25%;cpu,75%",
    "cuda:0,0.5;cpu,0.25",
    "cpu,*",
    " cuda , 2.5 GiB ; cpu , * ;",
    "xpu:1,1e3mb;mps,*;hpu,0b",
    "cuda:0,30%;cpu,*",
]
FRAGMENTS = list(";,*%:.-+eE0123456789 \t\n") + [
    "gb", "KiB", "tb", "cuda", "cpu", ":0", ":128", "nan", "inf", "1e999", "1e-999", "\x00", "\u0663",
    "\ud800", "\u00e9", "\uff47\uff42", "\u2028", ";;", ",,", "**", "%%", "9" * 40, "0." + "0" * 40 + "1",
]
DEVICES = ["cpu", "cuda:0", "cuda:1", "cuda:7", "xpu:0", "mps", "hpu:0", "privateuseone:0", "meta"]


def check_only_allocation_error_escapes(text):
    """The fuzz oracle: parse fails cleanly, pointing at real input, or round-trips."""
    try:
        allocation = parse_allocation(text)
    except AllocationError as error:
        assert text[error.position : error.position + len(error.token)] == error.token
        assert f"at position {error.position}" in str(error)
        return
    assert parse_allocation(allocation.format()) == allocation


@settings(FUZZ, max_examples=4000)
@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_allocation_error(text):
    check_only_allocation_error_escapes(text)


@settings(FUZZ, max_examples=3000)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_text_from_grammar_fragments_raises_only_allocation_error(text):
    check_only_allocation_error_escapes(text)


@st.composite
def mutated_valid_strings(draw):
    """A valid string after a few random inserts, deletions, replacements and duplications."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        piece = draw(st.sampled_from(FRAGMENTS)) if op in ("insert", "replace") else ""
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(FUZZ, max_examples=4000)
@given(mutated_valid_strings())
def test_mutated_valid_strings_raise_only_allocation_error(text):
    check_only_allocation_error_escapes(text)


@settings(FUZZ, max_examples=50)
@given(st.text(min_size=1, max_size=20), st.integers(200, 2000))
def test_huge_strings_raise_only_allocation_error(chunk, repeat):
    check_only_allocation_error_escapes(chunk * repeat)


def amounts(mode, count, with_wildcard):
    if mode == "bytes":
        scaled = st.tuples(st.integers(0, 10**4), st.sampled_from(sorted(UNITS.values()))).map(lambda p: p[0] * p[1])
        return st.lists(st.integers(0, MAX_BYTES) | scaled, min_size=count, max_size=count)
    if mode == "fraction":
        return st.lists(st.floats(0.0, 1.0), min_size=count, max_size=count)
    # With '*' the percentages must sum to at most 100; integer bounds keep the exact sum under it.
    top = 100 // max(count, 1) if with_wildcard else 1e12
    shares = st.lists(st.floats(0.0, top), min_size=count, max_size=count)
    return shares if with_wildcard else shares.filter(lambda xs: sum(xs) > 0)


@st.composite
def valid_allocations(draw):
    devices = draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=5, unique=True))
    wildcard = draw(st.none() | st.integers(0, len(devices) - 1))
    explicit = len(devices) - (wildcard is not None)
    mode = draw(st.sampled_from(["bytes", "ratio", "fraction"])) if explicit else "bytes"
    values = iter(abs(v) for v in draw(amounts(mode, explicit, wildcard is not None)))
    entries = tuple(AllocationEntry(d, None if i == wildcard else next(values)) for i, d in enumerate(devices))
    return Allocation(mode, entries)


@settings(FUZZ, max_examples=2000)
@given(valid_allocations())
def test_parse_of_format_is_identity_for_valid_allocations(allocation):
    text = allocation.format()
    assert parse_allocation(text) == allocation
    assert parse_allocation(text).format() == text
