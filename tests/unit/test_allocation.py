"""Specification of the allocation string: valid forms, canonical text, and resolving to bytes."""
import pytest

from distorch.allocation import Allocation, AllocationEntry, parse_allocation
from distorch.errors import AllocationError, BudgetError, DeviceError

GB = 10**9
TOTALS = {"cuda:0": 24 * GB, "cuda:1": 12 * GB, "cpu": 64 * GB}


def entries(*pairs):
    return tuple(AllocationEntry(device, amount) for device, amount in pairs)


# --- parsing ---------------------------------------------------------------------------------


def test_bytes_mode_gives_int_bytes_per_device():
    a = parse_allocation("cuda:0,8gb;cuda:1,4gib;cpu,*")
    assert a == Allocation("bytes", entries(("cuda:0", 8 * GB), ("cuda:1", 4 * 2**30), ("cpu", None)))


def test_ratio_mode_gives_float_percentages():
    a = parse_allocation("cuda:0,25%;cpu,75%")
    assert a == Allocation("ratio", entries(("cuda:0", 25.0), ("cpu", 75.0)))
    assert all(isinstance(e.amount, float) for e in a.entries)


def test_fraction_mode_gives_bare_numbers_in_unit_interval():
    a = parse_allocation("cuda:0,0.5;cpu,0.25;cuda:1,1;xpu:0,0")
    assert a.mode == "fraction"
    assert [e.amount for e in a.entries] == [0.5, 0.25, 1.0, 0.0]


def test_wildcard_alone_is_bytes_mode_by_convention():
    assert parse_allocation("cpu,*") == Allocation("bytes", entries(("cpu", None)))


@pytest.mark.parametrize(
    "text, mode", [("cpu,*;cuda:0,8gb", "bytes"), ("cpu,*;cuda:0,30%", "ratio"), ("cpu,*;cuda:0,0.3", "fraction")]
)
def test_wildcard_fits_every_mode_and_any_position(text, mode):
    a = parse_allocation(text)
    assert a.mode == mode
    assert a.wildcard == AllocationEntry("cpu", None)


def test_whitespace_around_tokens_is_tolerated():
    assert parse_allocation(" cuda:0 , 8 gb ;\tcpu , * \n") == parse_allocation("cuda:0,8gb;cpu,*")


def test_one_trailing_semicolon_is_tolerated():
    assert parse_allocation("cuda:0,8gb;cpu,*; ") == parse_allocation("cuda:0,8gb;cpu,*")


def test_bare_cuda_is_normalised_to_cuda_0():
    assert parse_allocation("cuda,8gb;cpu,*").entries[0].device == "cuda:0"


def test_device_names_are_case_insensitive_and_canonical():
    assert [e.device for e in parse_allocation("CUDA:1,1gb;CPU:0,*").entries] == ["cuda:1", "cpu"]


@pytest.mark.parametrize(
    "device, canonical", [("xpu", "xpu:0"), ("mps", "mps"), ("hpu:2", "hpu:2"), ("privateuseone", "privateuseone:0")]
)
def test_any_device_type_torch_knows_is_accepted(device, canonical):
    assert parse_allocation(f"{device},1gb;cpu,*").entries[0].device == canonical


def test_device_presence_is_not_checked_when_parsing():
    assert parse_allocation("cuda:7,1gb").entries[0].device == "cuda:7"


def test_exponent_notation_is_accepted():
    assert parse_allocation("cpu,1e-05").entries[0].amount == 1e-05


def test_ratios_need_not_sum_to_100_without_wildcard():
    assert parse_allocation("cuda:0,1%;cpu,3%").mode == "ratio"


def test_parse_classmethod_equals_module_function():
    assert Allocation.parse("cuda:0,8gb;cpu,*") == parse_allocation("cuda:0,8gb;cpu,*")


# --- canonical text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, canonical",
    [
        (" cuda , 8GB ; cpu , * ;", "cuda:0,8gb;cpu,*"),
        ("cuda:0,8192mib;cpu,*", "cuda:0,8gib;cpu,*"),
        ("cuda:0,2.5gb;cpu,*", "cuda:0,2500mb;cpu,*"),
        ("cuda:0,25%;cpu,75%", "cuda:0,25.0%;cpu,75.0%"),
        ("cuda:0,.5;cpu,*", "cuda:0,0.5;cpu,*"),
        ("cpu,*", "cpu,*"),
    ],
)
def test_format_is_canonical(text, canonical):
    assert parse_allocation(text).format() == canonical


def test_str_is_the_canonical_text():
    assert str(parse_allocation("cuda,8gb;cpu,*")) == "cuda:0,8gb;cpu,*"


@pytest.mark.parametrize(
    "text", ["cuda:0,1b;cpu,*", "cuda:0,33.333333333333336%;cpu,*", "cpu,0.1", "cuda:0,5e-324%;cpu,1%"]
)
def test_parse_of_format_gives_the_same_allocation(text):
    a = parse_allocation(text)
    assert parse_allocation(a.format()) == a


# --- resolve -----------------------------------------------------------------------------------


def test_resolve_bytes_gives_wildcard_the_rest():
    assert parse_allocation("cuda:0,8gb;cpu,*").resolve(10 * GB, TOTALS) == {"cuda:0": 8 * GB, "cpu": 2 * GB}


def test_resolve_wildcard_anywhere_takes_what_the_others_leave():
    assert parse_allocation("cpu,*;cuda:0,8gb").resolve(10 * GB, TOTALS) == {"cpu": 2 * GB, "cuda:0": 8 * GB}


def test_resolve_serves_entries_in_order_and_leaves_surplus_unused():
    a = parse_allocation("cuda:0,8gb;cuda:1,8gb;cpu,*")
    assert a.resolve(10 * GB, TOTALS) == {"cuda:0": 8 * GB, "cuda:1": 2 * GB, "cpu": 0}


def test_resolve_without_wildcard_may_over_cover_the_model():
    assert parse_allocation("cuda:0,20gb").resolve(10 * GB, TOTALS) == {"cuda:0": 10 * GB}


def test_resolve_ratio_is_proportional_to_normalised_shares():
    assert parse_allocation("cuda:0,1%;cpu,3%").resolve(8 * GB, TOTALS) == {"cuda:0": 2 * GB, "cpu": 6 * GB}


def test_resolve_ratio_rounding_still_covers_the_model_exactly():
    result = parse_allocation("cuda:0,1%;cuda:1,1%;cpu,1%").resolve(1001, TOTALS)
    assert sum(result.values()) == 1001
    assert sorted(result.values()) == [333, 334, 334]


def test_resolve_ratio_with_wildcard_reads_percent_of_model():
    assert parse_allocation("cuda:0,25%;cpu,*").resolve(8 * GB, TOTALS) == {"cuda:0": 2 * GB, "cpu": 6 * GB}


def test_resolve_fraction_is_fraction_of_the_device_total():
    assert parse_allocation("cuda:0,0.25;cpu,*").resolve(10 * GB, TOTALS) == {"cuda:0": 6 * GB, "cpu": 4 * GB}


def test_resolve_returns_devices_in_entry_order():
    assert list(parse_allocation("cpu,*;cuda:1,1gb;cuda:0,1gb").resolve(5 * GB, TOTALS)) == ["cpu", "cuda:1", "cuda:0"]


def test_resolve_accepts_non_canonical_device_total_keys():
    assert parse_allocation("cuda:0,1gb;cpu,*").resolve(2 * GB, {"cuda": 24 * GB, "CPU": 64 * GB})["cuda:0"] == GB


def test_resolve_rejects_byte_budget_above_device_total_naming_the_device():
    with pytest.raises(BudgetError, match="'cuda:1'") as info:
        parse_allocation("cuda:1,16gb;cpu,*").resolve(GB, TOTALS)
    assert info.value.device == "cuda:1"


def test_resolve_rejects_uncovered_model_and_suggests_cpu_wildcard():
    with pytest.raises(BudgetError, match=r"covers only 8000000000 of 10000000000 .*'cpu,\*'"):
        parse_allocation("cuda:0,8gb").resolve(10 * GB, TOTALS)


def test_resolve_rejects_device_missing_from_totals_listing_available_ones():
    with pytest.raises(DeviceError, match=r"'cuda:3'.*available: cuda:0, cuda:1, cpu") as info:
        parse_allocation("cuda:3,1gb;cpu,*").resolve(GB, TOTALS)
    assert info.value.device == "cuda:3"


def test_resolve_of_zero_byte_model_assigns_nothing():
    assert parse_allocation("cuda:0,8gb;cpu,*").resolve(0, TOTALS) == {"cuda:0": 0, "cpu": 0}


# --- one-number form ---------------------------------------------------------------------------


def test_virtual_vram_moves_that_many_decimal_gb_to_the_donor():
    a = Allocation.from_virtual_vram("cuda:0", 4.0, "cpu", 10 * GB)
    assert a == Allocation("bytes", entries(("cuda:0", 6 * GB), ("cpu", 4 * GB)))


def test_virtual_vram_above_model_size_moves_the_whole_model():
    a = Allocation.from_virtual_vram("cuda", 64, "cpu", 10 * GB)
    assert a == Allocation("bytes", entries(("cuda:0", 0), ("cpu", 10 * GB)))


def test_virtual_vram_zero_keeps_everything_on_compute_device():
    assert Allocation.from_virtual_vram("cuda:0", 0, "cpu", 5).resolve(5, TOTALS) == {"cuda:0": 5, "cpu": 0}


def test_virtual_vram_allocation_covers_the_model_exactly():
    a = Allocation.from_virtual_vram("cuda:0", 2.5, "cuda:1", 10 * GB)
    assert a.resolve(10 * GB, TOTALS) == {"cuda:0": 7_500_000_000, "cuda:1": 2_500_000_000}
    assert parse_allocation(a.format()) == a


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "lots"])
def test_virtual_vram_must_be_finite_and_non_negative(bad):
    with pytest.raises(AllocationError, match="virtual VRAM"):
        Allocation.from_virtual_vram("cuda:0", bad, "cpu", GB)


@pytest.mark.parametrize("donor", ["cuda:0", "cuda", " CUDA:0 "])
def test_virtual_vram_donor_must_differ_from_compute_device(donor):
    with pytest.raises(AllocationError, match="donor"):
        Allocation.from_virtual_vram("cuda:0", 1.0, donor, GB)


def test_virtual_vram_rejects_unknown_device_names():
    with pytest.raises(AllocationError, match="'gpu0'"):
        Allocation.from_virtual_vram("gpu0", 1.0, "cpu", GB)
