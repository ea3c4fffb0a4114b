"""distorch.gguf_file: a GGUF's tensors as raw bytes mapped from the file, and errors that name file and tensor."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

from distorch.gguf_file import ORIG_SHAPE_PREFIX, GGUFError, read_gguf
from distorch.quant import dequantize
from distorch.quant import types as T
from gguf_files import k_quant_rows, values, write_file
from quant_helpers import assert_same_floats


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Plain and quantized tensors in file order b, a, c, d, e; one with a recorded original shape."""
    return write_file(tmp_path / "mixed.gguf", {
        "b.weight": ("Q8_0", values(8, 64, seed=1)),
        "a.bias": ("F32", values(8, seed=2)),
        "c.norm": ("F16", values(16, seed=3)),
        "d.weight": ("Q4_K", k_quant_rows(T.Q4_K, 4, 512, seed=4)),
        "e.conv": ("Q8_0", values(2, 256, seed=5)),  # a (8, 4, 4, 4) convolution laid out as (2, 256)
    }, metadata={ORIG_SHAPE_PREFIX + "e.conv": (8, 4, 4, 4), "flux.tokens_like": "kept"})


def test_tensors_come_in_file_order_with_type_logical_and_stored_shapes(mixed: Path) -> None:
    f = read_gguf(mixed)
    assert f.architecture == "flux" and list(f.tensors) == ["b.weight", "a.bias", "c.norm", "d.weight", "e.conv"]
    got = {n: (t.qtype, t.shape, t.stored_shape) for n, t in f.tensors.items()}
    assert got == {"b.weight": (T.Q8_0, (8, 64), (8, 64)), "a.bias": (T.F32, (8,), (8,)),
                   "c.norm": (T.F16, (16,), (16,)), "d.weight": (T.Q4_K, (4, 512), (4, 512)),
                   "e.conv": (T.Q8_0, (8, 4, 4, 4), (2, 256))}
    assert f.type_counts() == {"Q8_0": 2, "F32": 1, "F16": 1, "Q4_K": 1}


def test_raw_bytes_are_the_files_bytes_and_dequantize_to_ggufs_reference(mixed: Path) -> None:
    f = read_gguf(mixed)
    reference = {t.name: t for t in GGUFReader(str(mixed)).tensors}
    for name, tensor in f.tensors.items():
        expected = np.asarray(reference[name].data).reshape(-1).view(np.uint8)
        assert tensor.data.dtype == torch.uint8 and tensor.data.dim() == 1
        assert np.array_equal(tensor.data.numpy(), expected), name
        dense = dequantize(tensor.data, tensor.spec).view(tensor.shape)
        want = gguf_quants.dequantize(expected, GGMLQuantizationType(tensor.qtype.type_id)).reshape(tensor.shape)
        assert_same_floats(dense, torch.from_numpy(np.array(want, dtype=np.float32)))


def test_plain_tensors_view_their_values_in_their_own_dtype(mixed: Path) -> None:
    f = read_gguf(mixed)
    assert torch.equal(f.tensors["a.bias"].plain(), torch.from_numpy(values(8, seed=2)))
    assert torch.equal(f.tensors["c.norm"].plain(), torch.from_numpy(values(16, seed=3).astype(np.float16)))
    with pytest.raises(ValueError, match="not a plain float type"):
        f.tensors["b.weight"].plain()


def test_tensors_are_views_of_one_private_mapping_of_the_file(mixed: Path) -> None:
    f = read_gguf(mixed)
    offsets = {t.name: t.data_offset for t in GGUFReader(str(mixed)).tensors}
    first = f.tensors["b.weight"].data.data_ptr()
    for name, tensor in f.tensors.items():  # no copies: every tensor sits at its file offset in one mapping
        assert tensor.data.data_ptr() - first == offsets[name] - offsets["b.weight"]
    before = mixed.read_bytes()
    f.tensors["a.bias"].data.fill_(0)  # copy-on-write: the file never changes
    assert mixed.read_bytes() == before


def test_metadata_keeps_scalars_and_original_shapes(mixed: Path) -> None:
    meta = read_gguf(mixed).metadata
    assert meta["general.architecture"] == "flux" and meta["flux.tokens_like"] == "kept"
    assert meta[ORIG_SHAPE_PREFIX + "e.conv"] == [8, 4, 4, 4]


# --- bad input: every error names the file, and the tensor where one is at fault ---------------------------------
def test_a_missing_or_tiny_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "absent.gguf")
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match=r"tiny.gguf: 4 bytes is too short"):
        read_gguf(tmp_path / "tiny.gguf")


def test_a_file_of_another_format_is_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + bytes(64))
    with pytest.raises(GGUFError, match=r"model.gguf: not a GGUF file \(bad magic number\)"):
        read_gguf(tmp_path / "model.gguf")


def test_a_file_cut_inside_tensor_data_names_the_first_tensor_it_cuts(mixed: Path) -> None:
    offsets = {t.name: t.data_offset for t in GGUFReader(str(mixed)).tensors}
    os.truncate(mixed, offsets["d.weight"] + 100)
    with pytest.raises(GGUFError, match=r"tensor 'd.weight' of .*mixed.gguf: the file ends at byte \d+ but this "
                                        r"Q4_K tensor's data runs to byte \d+: the file is truncated") as caught:
        read_gguf(mixed)
    assert caught.value.tensor == "d.weight" and caught.value.path.endswith("mixed.gguf")


def test_a_file_cut_inside_its_header_is_reported_as_damaged(mixed: Path) -> None:
    os.truncate(mixed, 40)
    with pytest.raises(GGUFError, match=r"mixed.gguf: not a readable GGUF file: the header is damaged or cut short"):
        read_gguf(mixed)


def test_a_tensor_of_a_type_the_engine_does_not_dequantize_is_named(tmp_path: Path) -> None:
    raw = np.zeros((2, 66), dtype=np.uint8)  # two IQ2_XXS blocks: a type gguf knows and the engine does not
    path = write_file(tmp_path / "iq2.gguf", {"ok.weight": ("F32", values(4)), "bad.weight": ("IQ2_XXS", raw)})
    with pytest.raises(GGUFError, match=r"tensor 'bad.weight' of .*iq2.gguf: GGML type IQ2_XXS \(id 16\) is not "
                                        r"supported"):
        read_gguf(path)


def test_a_tensor_of_an_unknown_type_id_is_named(tmp_path: Path) -> None:
    path = write_file(tmp_path / "t99.gguf", {"first": ("F32", values(4)), "second": ("F32", values(4))})
    info = next(t.field for t in GGUFReader(str(path)).tensors if t.name == "second")
    type_at = info.offset + 8 + len("second") + 4 + 8 * 1  # name length, name, n_dims, one dimension
    with open(path, "rb+") as f:
        f.seek(type_at)
        f.write(np.uint32(99).tobytes())
    with pytest.raises(GGUFError, match=r"tensor 'second' of .*t99.gguf: unknown GGML type id 99"):
        read_gguf(path)


def test_an_original_shape_that_does_not_fit_the_stored_one_is_named(tmp_path: Path) -> None:
    path = write_file(tmp_path / "shape.gguf", {"w": ("Q8_0", values(2, 256))},
                      metadata={ORIG_SHAPE_PREFIX + "w": (8, 4, 4, 5)})
    with pytest.raises(GGUFError, match=r"tensor 'w' of .*shape.gguf: its recorded original shape \[8, 4, 4, 5\]"):
        read_gguf(path)
