"""Specification of the header-only placement preview (distorch.plan_preview) on real .safetensors files."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distorch.errors import AllocationError, BudgetError, DistorchError
from distorch.layout import align_up, layout_model
from distorch.plan_preview import HeaderError, block_of, preview, read_header, read_layout, tensor_bytes
from distorch.safetensors_header import read_metadata
from toy_models import make_model

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


def test_block_bytes_are_the_sum_of_their_tensor_sizes_each_aligned_as_the_engine_packs_them(tmp_path):
    layout = read_layout(flux_like(tmp_path))
    sizes = dict(layout.blocks)
    assert sizes["double_blocks.0"] == align_up(32 * 32 * 4) + align_up(96 * 2) == 4096 + 256
    assert sizes["single_blocks.11"] == 16 * 32 * 4
    # adaLN_modulation.1 is a numbered child but not a block list: it counts as other bytes (never padded)
    assert layout.other_bytes == 16 * 8 * 4 + 4 * 4 * 4
    assert layout.file_bytes == tensor_bytes([tmp_path / "flux.safetensors"]) < layout.model_bytes


def test_a_load_dtype_sizes_every_floating_tensor_in_that_dtype_and_leaves_integer_tensors_alone(tmp_path):
    path = write(tmp_path / "m.safetensors", {"double_blocks.0.w": torch.zeros(64, 64, dtype=torch.bfloat16),
                                              "double_blocks.0.steps": torch.zeros(64, dtype=torch.int64),
                                              "img_in.weight": torch.zeros(10, dtype=torch.float16)})
    as_stored, as_fp32 = read_layout(path), read_layout(path, load_dtypes=["F32"])
    assert dict(as_stored.blocks) == {"double_blocks.0": 64 * 64 * 2}
    assert dict(as_fp32.blocks) == {"double_blocks.0": 64 * 64 * 4}
    # integer tensors keep their dtype, and the engine leaves them outside the packed block
    assert (as_stored.other_bytes, as_fp32.other_bytes) == (64 * 8 + 10 * 2, 64 * 8 + 10 * 4)
    assert as_stored.file_bytes == as_fp32.file_bytes == tensor_bytes([path])


@pytest.mark.parametrize("load_dtypes", [["fp32"], ["I64"], ["F32", "F32"]])
def test_load_dtypes_must_name_one_floating_safetensors_dtype_per_file(tmp_path, load_dtypes):
    with pytest.raises(ValueError, match="load_dtypes"):
        read_layout(flux_like(tmp_path), load_dtypes=load_dtypes)


@pytest.mark.parametrize("stored, loaded, name", [(torch.bfloat16, torch.float32, "F32"),
                                                   (torch.float32, torch.float16, "F16"),
                                                   (torch.float16, torch.float8_e4m3fn, "F8_E4M3")])
def test_a_header_with_the_load_dtype_gives_the_engines_own_layout_of_the_loaded_model(
        tmp_path, stored, loaded, name):
    model = make_model(stored, doubles=3, singles=5)
    path = write(tmp_path / "toy.safetensors", model.state_dict())
    engine = layout_model(model.to(loaded))  # what ComfyUI holds after loading the file in that dtype
    preview_layout = read_layout(path, load_dtypes=[name])
    assert preview_layout.blocks == tuple(engine.block_sizes)
    assert preview_layout.model_bytes == engine.total_bytes


class TinyUNet(torch.nn.Module):
    """ComfyUI's UNet shape: lists of sequentials whose layers the model code runs one by one."""

    def __init__(self) -> None:
        super().__init__()
        sequential = lambda *widths: torch.nn.Sequential(*(torch.nn.Linear(w, w) for w in widths))  # noqa: E731
        self.input_blocks = torch.nn.ModuleList([sequential(4), sequential(8, 4)])
        self.middle_block = sequential(4, 4)
        self.output_blocks = torch.nn.ModuleList([sequential(4, 8, 2)])
        self.out = torch.nn.Linear(2, 2)


def test_unet_blocks_are_the_layers_of_each_sequential_as_the_engine_streams_them(tmp_path):
    model = TinyUNet()
    path = write(tmp_path / "unet.safetensors", model.state_dict())
    engine = layout_model(model)
    assert read_layout(path).blocks == tuple(engine.block_sizes)
    assert [name for name, _ in engine.block_sizes] == [
        "input_blocks.0.0", "input_blocks.1.0", "input_blocks.1.1",
        "output_blocks.0.0", "output_blocks.0.1", "output_blocks.0.2"]


def test_unet_middle_block_sorts_between_input_and_output_blocks(tmp_path):
    tensors = {f"model.diffusion_model.{k}": torch.zeros(4) for k in (
        "output_blocks.0.0.weight", "input_blocks.11.0.weight", "input_blocks.2.0.weight",
        "middle_block.1.transformer_blocks.0.attn1.weight", "out.2.weight")}
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(8)
    layout = read_layout(write(tmp_path / "ckpt.safetensors", tensors), prefix="model.diffusion_model.")
    assert [n for n, _ in layout.blocks] == [
        "input_blocks.2.0", "input_blocks.11.0", "middle_block.1.transformer_blocks.0", "output_blocks.0.0"]
    assert layout.excluded_bytes == 8 * 4  # the VAE is not part of the streamed model


@pytest.mark.parametrize("key, block", [
    ("text_model.encoder.layers.5.mlp.fc1.weight", ("text_model.encoder.", "layers", (5,))),
    ("encoder.block.11.layer.0.SelfAttention.q.weight", ("encoder.", "block", (11,))),
    ("transformer_blocks.7.attn.to_q.weight", ("", "transformer_blocks", (7,))),
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", ("", "input_blocks", (1, 1))),
    ("output_blocks.2.weight", ("", "output_blocks", (2,))),  # a list element without layers
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
    assert layout.blocks == (("0/text_model.encoder.layers.0", 256), ("1/encoder.block.0", 256))
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


def test_metadata_is_not_a_tensor_and_is_read_on_its_own(tmp_path):
    path = tmp_path / "meta.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    assert list(read_header(path)) == ["w"]
    assert read_metadata(path) == {"format": "pt"}
    assert read_metadata(write(tmp_path / "none.safetensors", {"w": torch.zeros(2)})) == {}


def test_preview_bytes_per_device_add_up_to_the_model_as_loaded(tmp_path):
    path = flux_like(tmp_path)
    result = preview(path, "cpu", {"cpu": 64 * GIB}, virtual_vram_gb=0.0, load_dtypes=["F16"])
    assert sum(result["bytes_by_device"].values()) == result["model_bytes"]
    assert result["model_bytes"] == read_layout(path, load_dtypes=["F16"]).model_bytes
    assert result["file_bytes"] == tensor_bytes([path]) and result["loaded_as"] == ["fp16"]
    json.dumps(result)  # the route returns it as is


def test_the_preview_plans_exactly_when_the_budget_reaches_the_minimum_it_reports(tmp_path):
    path, totals = flux_like(tmp_path), {"cpu": 64 * GIB}
    planned = preview(path, "cpu", totals, virtual_vram_gb=0.0)
    most_streamable = planned["model_bytes"] - planned["minimum_budget_bytes"]
    at_minimum = preview(path, "cpu", totals, virtual_vram_gb=most_streamable / 1e9)
    assert at_minimum["devices"][0]["budget_bytes"] == planned["minimum_budget_bytes"]
    assert at_minimum["warning"] is None
    below = preview(path, "cpu", totals, virtual_vram_gb=(most_streamable + 1) / 1e9)
    assert "below the minimum" in below["warning"]  # one byte short: the minimum plan, with a warning


def test_preview_streams_evenly_spaced_blocks_to_the_store_by_allocation(tmp_path):
    path = flux_like(tmp_path)
    model = tensor_bytes([path])
    totals = {"cpu": 64 * GIB, "cuda:0": 24 * GIB}  # the devices a preview may use; no GPU is touched
    result = preview(path, "cuda:0", totals, allocation_text=f"cuda:0,{model // 2}b;cpu,*")
    compute, store = result["devices"]
    assert (compute["device"], store["device"], store["role"]) == ("cuda:0", "cpu", "store")
    assert compute["bytes"] + store["bytes"] == result["model_bytes"] and store["blocks"] > 0
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
