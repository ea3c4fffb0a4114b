"""distorch.layout: where the blocks are, and how a block packs into one aligned byte range."""
import torch
from torch import nn

from distorch.layout import ALIGNMENT, find_blocks, layout_block, layout_model, other_bytes
from toy_models import make_model


def test_blocks_are_modulelist_elements_in_registration_order():
    names = [name for name, _ in find_blocks(make_model(doubles=2, singles=3))]
    assert names == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1", "single_blocks.2"]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.inner = nn.ModuleList([nn.Linear(2, 2)])


def test_blocks_are_found_in_nested_modules_but_not_inside_a_found_block():
    inner = nn.Module()
    inner.layers = nn.ModuleList([_Block()])
    root = nn.Module()
    root.encoder = inner
    assert [name for name, _ in find_blocks(root)] == ["encoder.layers.0"]


def test_a_sequential_list_element_is_split_into_its_layers_with_weights():
    # Model code may iterate a Sequential instead of calling it (ComfyUI's UNet does), so its own hooks
    # would never run; each layer with weights is a block instead.
    root = nn.Module()
    root.input_blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.SiLU(), nn.Linear(2, 2))])
    assert [name for name, _ in find_blocks(root)] == ["input_blocks.0.0", "input_blocks.0.2"]


def test_layout_names_are_paths_relative_to_the_root():
    model = make_model()
    layout = layout_block("double_blocks.3", model.double_blocks[3])
    names = [t.name for t in layout.tensors]
    assert "double_blocks.3.img_attn.qkv.weight" in names
    assert set(names) <= {f"double_blocks.3.{n}" for n, _ in model.double_blocks[3].state_dict().items()}


def test_every_tensor_offset_is_256_byte_aligned_and_the_block_is_padded():
    layout = layout_block("b", make_model(torch.bfloat16).single_blocks[0])
    assert all(t.offset % ALIGNMENT == 0 for t in layout.tensors)
    assert layout.nbytes % ALIGNMENT == 0


def test_tensors_do_not_overlap_and_fit_the_block():
    layout = layout_block("b", make_model().double_blocks[0])
    ends = [t.offset + t.nbytes for t in layout.tensors]
    assert all(end <= nxt.offset for end, nxt in zip(ends, layout.tensors[1:]))
    assert ends[-1] <= layout.nbytes


def test_floating_buffers_are_packed_and_integer_buffers_are_not():
    names = {t.name for t in layout_block("b", make_model().single_blocks[0]).tensors}
    assert "b.norm.scale" in names
    assert "b.norm.calls" not in names


def test_slot_views_reproduce_each_tensor_exactly():
    block = make_model(torch.bfloat16).double_blocks[1]
    layout = layout_block("b", block)
    packed = torch.zeros(layout.nbytes, dtype=torch.uint8)
    state = dict(block.named_parameters()) | dict(block.named_buffers())
    for slot in layout.tensors:
        slot.view_in(packed).copy_(state[slot.name[2:]])
    for slot in layout.tensors:
        assert torch.equal(slot.view_in(packed), state[slot.name[2:]])


def test_other_bytes_count_everything_outside_the_blocks():
    model = make_model()
    outside = [model.img_in, model.final] + [m.norm for m in model.single_blocks] + [m.img_norm for m in model.double_blocks]
    calls = sum(m.calls.numel() * m.calls.element_size() for m in outside[2:])
    params = sum(p.numel() * p.element_size() for m in outside[:2] for p in m.parameters())
    assert other_bytes(model) == params + calls


def test_model_layout_totals_blocks_and_other_bytes():
    layout = layout_model(make_model())
    assert layout.total_bytes == layout.other_bytes + sum(size for _, size in layout.block_sizes)
