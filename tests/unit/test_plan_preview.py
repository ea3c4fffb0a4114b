"""Specification of the header-only placement preview (distorch.plan_preview) on real .safetensors files."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distorch.errors import AllocationError, BudgetError, DistorchError
from distorch.plan_preview import HeaderError, block_of, preview, read_header, read_layout, tensor_bytes

GIB = 1024**3


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def flux_like(tmp_path: Path, double: int = 3, single: int = 12) -> Path:
    """A Flux-shaped file with more than 10 single blocks, so alphabetical order ('10' < '2') is wrong."""
    tensors = {"img_in.weight": torch.zeros(16, 8), "final_layer.adaLN_modulation.1.weight": torch.zeros(4, 4)}
    for i in range(double):
        tensors[f"double_blocks.{i}.img_mlp.0.weight"] = torch.zeros(32, 32)
        tensors[f"double_blocks.{i}.txt_attn.qkv.bias"] = torch.zeros(96, dtype=torch.bfloat16)
    for i in range(single):
        tensors[f"single_blocks.{i}.linear1.weight"] = torch.zeros(16, 32)
    return write(tmp_path / "flux.safetensors", tensors)


def test_blocks_come_in_execution_order_not_header_order(tmp_path):
    layout = read_layout(flux_like(tmp_path))
    names = [name for name, _ in layout.blocks]
    assert names == [f"double_blocks.{i}" for i in range(3)] + [f"single_blocks.{i}" for i in range(12)]
    header = list(read_header(tmp_path / "flux.safetensors"))  # why ordering cannot come from the header:
    assert header.index("single_blocks.10.linear1.weight") < header.index("single_blocks.2.linear1.weight")


def test_block_bytes_are_the_sum_of_their_tensor_sizes(tmp_path):
    layout = read_layout(flux_like(tmp_path))
    sizes = dict(layout.blocks)
    assert sizes["double_blocks.0"] == 32 * 32 * 4 + 96 * 2
    assert sizes["single_blocks.11"] == 16 * 32 * 4
    # adaLN_modulation.1 is a numbered child but not a block list: it counts as other bytes
    assert layout.other_bytes == 16 * 8 * 4 + 4 * 4 * 4
    assert layout.model_bytes == tensor_bytes([tmp_path / "flux.safetensors"])


def test_unet_middle_block_sorts_between_input_and_output_blocks(tmp_path):
    tensors = {f"model.diffusion_model.{k}": torch.zeros(4) for k in (
        "output_blocks.0.0.weight", "input_blocks.11.0.weight", "input_blocks.2.0.weight",
        "middle_block.1.transformer_blocks.0.attn1.weight", "out.2.weight")}
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(8)
    layout = read_layout(write(tmp_path / "ckpt.safetensors", tensors), prefix="model.diffusion_model.")
    assert [n for n, _ in layout.blocks] == [
        "input_blocks.2", "input_blocks.11", "middle_block.1.transformer_blocks.0", "output_blocks.0"]
    assert layout.excluded_bytes == 8 * 4  # the VAE is not part of the streamed model


@pytest.mark.parametrize("key, block", [
    ("text_model.encoder.layers.5.mlp.fc1.weight", ("text_model.encoder.", "layers", 5)),
    ("encoder.block.11.layer.0.SelfAttention.q.weight", ("encoder.", "block", 11)),
    ("transformer_blocks.7.attn.to_q.weight", ("", "transformer_blocks", 7)),
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", ("", "input_blocks", 1)),
    ("final_layer.adaLN_modulation.1.weight", None),
    ("double_blocks.3", None),  # an index must be followed by a tensor name
    ("img_in.weight", None),
])
def test_block_of_finds_the_outermost_known_block_list(key, block):
    assert block_of(key) == block


def test_several_files_are_one_model_with_file_tagged_block_names(tmp_path):
    clip = write(tmp_path / "clip.safetensors", {"text_model.encoder.layers.0.w": torch.zeros(2)})
    t5 = write(tmp_path / "t5.safetensors", {"encoder.block.0.w": torch.zeros(3), "shared.weight": torch.zeros(5)})
    layout = read_layout([clip, t5])
    assert layout.blocks == (("0/text_model.encoder.layers.0", 8), ("1/encoder.block.0", 12))
    assert layout.other_bytes == 20 and layout.files == ("clip.safetensors", "t5.safetensors")


def raw_file(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize("content, problem", [
    (b"", "shorter than the 8-byte header length"),
    (b"\x05\x00", "shorter than the 8-byte header length"),
])
def test_a_file_too_short_for_a_header_length_is_named_in_the_error(tmp_path, content, problem):
    path = tmp_path / "short.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=problem) as caught:
        read_header(path)
    assert str(path) in str(caught.value) and isinstance(caught.value, DistorchError)


def test_a_header_longer_than_the_file_is_reported_truncated(tmp_path):
    path = raw_file(tmp_path / "cut.safetensors", b'{"a": 1}', length=4096)
    with pytest.raises(HeaderError, match="truncated: header says 4096 bytes"):
        read_header(path)


def test_a_file_cut_inside_its_tensor_data_is_reported_truncated(tmp_path):
    whole = flux_like(tmp_path).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[:-100])
    with pytest.raises(HeaderError, match="truncated: entry"):
        read_layout(cut)


def test_an_absurd_header_length_is_rejected_without_reading_it(tmp_path):
    path = raw_file(tmp_path / "huge.safetensors", b"{}", length=2**40)
    with pytest.raises(HeaderError, match="exceeds"):
        read_header(path)


@pytest.mark.parametrize("header, problem", [
    (b"{not json", "header is not JSON"),
    (b"\xff\xfe{}", "header is not JSON"),
    (b"[1, 2]", "JSON list, not an object"),
    (json.dumps({"w": 3}).encode(), "entry 'w' is not an object"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}).encode(), "bad data_offsets"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}).encode(), "bad shape"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}).encode(), "run backwards"),
    (json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), "needs 12 bytes"),
])
def test_a_corrupt_header_names_the_problem(tmp_path, header, problem):
    path = raw_file(tmp_path / "bad.safetensors", header, data=b"\0" * 8)
    with pytest.raises(HeaderError, match=problem):
        read_header(path)


def test_metadata_is_not_a_tensor(tmp_path):
    path = tmp_path / "meta.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    assert list(read_header(path)) == ["w"]


def test_preview_bytes_per_device_add_up_to_the_file_tensor_bytes(tmp_path):
    path = flux_like(tmp_path)
    result = preview(path, "cpu", {"cpu": 64 * GIB}, virtual_vram_gb=0.0)
    assert sum(result["bytes_by_device"].values()) == tensor_bytes([path]) == result["model_bytes"]
    json.dumps(result)  # the route returns it as is


def test_preview_streams_evenly_spaced_blocks_to_the_store_by_allocation(tmp_path):
    path = flux_like(tmp_path)
    model = tensor_bytes([path])
    totals = {"cpu": 64 * GIB, "cuda:0": 24 * GIB}  # the devices a preview may use; no GPU is touched
    result = preview(path, "cuda:0", totals, allocation_text=f"cuda:0,{model // 2}b;cpu,*")
    compute, store = result["devices"]
    assert (compute["device"], store["device"], store["role"]) == ("cuda:0", "cpu", "store")
    assert compute["bytes"] + store["bytes"] == model and store["blocks"] > 0
    streamed = [name for name, where in result["plan"]["streamed"]]
    assert "double_blocks.0" not in streamed  # the head block stays resident
    assert len(result["plan"]["resident"]) + len(streamed) == result["block_count"]


def test_preview_rejects_a_bad_allocation_with_token_and_position(tmp_path):
    with pytest.raises(AllocationError) as caught:
        preview(flux_like(tmp_path), "cpu", {"cpu": 64 * GIB}, allocation_text="cpu,8gx")
    assert (caught.value.token, caught.value.position) == ("gx", 5)


def test_preview_of_a_budget_too_small_shows_the_minimum_plan_with_a_warning_not_an_error(tmp_path):
    result = preview(flux_like(tmp_path), "cuda:0", {"cpu": 64 * GIB, "cuda:0": 24 * GIB},
                     allocation_text="cuda:0,1kb;cpu,*")
    assert "below the minimum" in result["warning"] and "1.00 kB" in result["warning"]
    assert result["plan"]["resident"] == [] or result["devices"][0]["bytes"] > 1000
