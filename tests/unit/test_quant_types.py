"""distorch.quant.types: our GGML type table, raw sizes, and the errors for what it cannot handle."""
import gguf
import pytest
from gguf import GGMLQuantizationType

from distorch.errors import DistorchError, QuantError
from distorch.quant import types as T
from distorch.quant.types import block_count, ggml_type, raw_nbytes

EXPECTED_NAMES = {"F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K",
                  "Q2_K", "IQ4_NL", "IQ4_XS"}


def test_the_table_holds_exactly_the_fifteen_supported_types():
    assert {t.name for t in T.SUPPORTED_TYPES} == EXPECTED_NAMES
    assert len({t.type_id for t in T.SUPPORTED_TYPES}) == len(T.SUPPORTED_TYPES) == 15


@pytest.mark.parametrize("entry", T.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_every_entry_agrees_with_gguf_on_id_name_block_size_and_bytes(entry):
    gguf_type = GGMLQuantizationType(entry.type_id)
    assert gguf_type.name == entry.name
    assert gguf.GGML_QUANT_SIZES[gguf_type] == (entry.block_size, entry.type_size)


def test_every_gguf_type_we_do_not_support_is_named_with_gguf_id():
    unsupported = {t.value: t.name for t in GGMLQuantizationType if t.name not in EXPECTED_NAMES}
    assert T.UNSUPPORTED_TYPE_NAMES == unsupported


@pytest.mark.parametrize("key", [12, "Q4_K", "q4_k", GGMLQuantizationType.Q4_K, T.Q4_K])
def test_a_type_is_found_by_id_name_gguf_enum_or_entry(key):
    assert ggml_type(key) is T.Q4_K


@pytest.mark.parametrize("name", sorted(T.UNSUPPORTED_TYPE_NAMES.values()))
def test_an_unsupported_type_is_refused_by_name(name):
    gguf_type = GGMLQuantizationType[name]
    for key in (gguf_type, int(gguf_type), name):
        with pytest.raises(QuantError, match=rf"\b{name}\b.*not supported") as caught:
            ggml_type(key)
        assert caught.value.qtype == name
        assert isinstance(caught.value, DistorchError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("key", [4, 99, -1, 1 << 40])
def test_an_unknown_id_is_refused_with_its_number(key):
    with pytest.raises(QuantError, match=rf"unknown GGML type id {key}\b") as caught:
        ggml_type(key)
    assert caught.value.qtype is None


@pytest.mark.parametrize("key", ["Q9_9", "", None, 2.0, True, T.GGMLType("Q4_0", 2, 32, 17)])
def test_anything_else_is_refused(key):
    with pytest.raises(QuantError):
        ggml_type(key)


@pytest.mark.parametrize("entry", T.SUPPORTED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(3072, 12288), (12288, 3072), (5, 7, 256), (256,), (0, 256), (1, 1024)])
def test_raw_size_equals_gguf_byte_shape(entry, shape):
    byte_shape = gguf.quant_shape_to_byte_shape(shape, GGMLQuantizationType(entry.type_id))
    expected = 1
    for dim in byte_shape:
        expected *= dim
    assert raw_nbytes(shape, entry) == expected
    assert block_count(shape, entry) * entry.type_size == expected


def test_plain_types_take_any_shape():
    assert raw_nbytes((3, 5), "F32") == 60
    assert raw_nbytes((7,), "BF16") == 14
    assert raw_nbytes((), "F16") == 2


@pytest.mark.parametrize("entry", [t for t in T.SUPPORTED_TYPES if t.is_quantized], ids=lambda t: t.name)
def test_a_last_dimension_that_is_not_whole_blocks_is_refused_naming_type_and_block_size(entry):
    shape = (4, entry.block_size + 16)
    with pytest.raises(QuantError, match=rf"{entry.name} tensor shape \(4, {entry.block_size + 16}\).*"
                                         rf"not a multiple of the {entry.name} block size {entry.block_size}"):
        raw_nbytes(shape, entry)
    # only the last dimension counts: a first dimension that is not a multiple of the block is fine
    assert raw_nbytes((3, entry.block_size), entry) == 3 * entry.type_size


def test_a_0d_quantized_tensor_and_negative_dimensions_are_refused():
    with pytest.raises(QuantError, match="0-d"):
        raw_nbytes((), "Q8_0")
    with pytest.raises(QuantError, match="negative"):
        raw_nbytes((-32, 32), "Q8_0")
