"""A placement preview from a .safetensors file's header alone: what the DisTorch loaders would do, before
loading anything.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape,
``data_offsets``), then the raw tensor bytes. Only the header is read, so a 24 GB model previews in
milliseconds and without RAM.

Blocks are found by key pattern ``<prefix><list>.<index>.`` where ``<list>`` is a known block-list name
(``double_blocks``, ``input_blocks``, ``encoder.layers`` ...). The header's key order is useless for
execution order: safetensors writers sort tensors by name (the ``safetensors`` library by dtype alignment,
then alphabetically), so ``single_blocks.10`` precedes ``single_blocks.2`` and ``double_blocks`` precedes
``input_blocks`` whatever the model runs first. Order therefore comes from :data:`BLOCK_LISTS` (the rank of
the list name), then the numeric index.

Bytes are file bytes. The loader may differ slightly: it packs each tensor at a 256-byte aligned offset
(distorch.layout) and ComfyUI may cast weights on load (a ``weight_dtype`` option).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from .errors import DistorchError

PathLike = Union[str, "os.PathLike[str]"]

# Block-list names in the order a model runs them; a key's list name ranks its block. Several models' lists
# are here at once; within one model only its own appear, so the relative order of the others is moot.
BLOCK_LISTS: tuple[str, ...] = (
    # text encoders: CLIP ``encoder.layers``, T5 ``encoder.block``, LLM-style ``layers``
    "block", "layers",
    # UNets (ComfyUI ``input_blocks``/``output_blocks``, diffusers ``down_blocks``/``up_blocks``)
    "input_blocks", "down_blocks", "output_blocks", "up_blocks",
    # Lumina 2 runs its refiners before ``layers``; the rank of "layers" above keeps text encoders first
    "context_refiner", "noise_refiner",
    # DiTs: dual-stream lists run before single-stream ones (Flux, HunyuanVideo, HiDream, diffusers Flux)
    "joint_blocks", "double_blocks", "double_stream_blocks", "transformer_blocks",
    "single_blocks", "single_stream_blocks", "single_transformer_blocks",
    "blocks",  # Wan, Mochi, Cosmos
)
# Containers that are not block lists but hold some (a UNet's middle block holds transformer_blocks): they
# rank right after the list they follow in execution, so their inner blocks sort between the two lists.
CONTAINERS_AFTER: dict[str, str] = {"middle_block": "input_blocks", "mid_block": "down_blocks"}
_RANK = {name: float(rank) for rank, name in enumerate(BLOCK_LISTS)}
_ORDER = {**_RANK, **{name: _RANK[after] + 0.5 for name, after in CONTAINERS_AFTER.items()}}

MAX_HEADER_BYTES = 100 * 1000 * 1000  # the safetensors library's own limit; a bigger one is corruption
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}


class HeaderError(DistorchError, ValueError):
    """A .safetensors header that is missing, truncated or malformed; the message names file and problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{os.fspath(path)}: not a valid safetensors file: {problem}")


@dataclass(frozen=True)
class FileLayout:
    """A model's blocks in execution order and the bytes outside them (``excluded`` = outside ``prefix``)."""

    files: tuple[str, ...]
    blocks: tuple[tuple[str, int], ...]
    other_bytes: int
    excluded_bytes: int = 0

    @property
    def model_bytes(self) -> int:
        return self.other_bytes + sum(n for _, n in self.blocks)


def read_header(path: PathLike) -> dict[str, dict[str, Any]]:
    """The tensor entries of ``path``'s header (``__metadata__`` dropped), each checked for sane offsets."""
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        raw_length = file.read(8)
        if len(raw_length) < 8:
            raise HeaderError(path, f"file is {file_size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", raw_length)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(path, f"header length {length} exceeds {MAX_HEADER_BYTES} bytes")
        if length > file_size - 8:
            raise HeaderError(path, f"truncated: header says {length} bytes but only {file_size - 8} follow")
        text = file.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise HeaderError(path, f"header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise HeaderError(path, f"header is a JSON {type(header).__name__}, not an object")
    data_bytes = file_size - 8 - length
    return {name: _checked_entry(path, name, entry, data_bytes) for name, entry in header.items()
            if name != "__metadata__"}


def _checked_entry(path: PathLike, name: str, entry: Any, data_bytes: int) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise HeaderError(path, f"entry {name!r} is not an object")
    offsets, shape = entry.get("data_offsets"), entry.get("shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        raise HeaderError(path, f"entry {name!r} has bad data_offsets {offsets!r}")
    if not (isinstance(shape, list) and all(_is_count(x) for x in shape)):
        raise HeaderError(path, f"entry {name!r} has bad shape {shape!r}")
    begin, end = offsets
    if begin > end:
        raise HeaderError(path, f"entry {name!r} has data_offsets {offsets} that run backwards")
    if end > data_bytes:
        raise HeaderError(path, f"truncated: entry {name!r} ends at byte {end} of a {data_bytes}-byte data section")
    element = DTYPE_BYTES.get(entry.get("dtype"))
    if element is not None and math.prod(shape) * element != end - begin:
        raise HeaderError(path, f"entry {name!r}: {entry.get('dtype')} {shape} needs "
                                f"{math.prod(shape) * element} bytes, data_offsets give {end - begin}")
    return entry


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def block_of(key: str) -> tuple[str, str, int] | None:
    """``(prefix, list name, index)`` of the block holding tensor ``key``, or None outside blocks.

    The outermost known list wins, as in distorch.layout (a found block is not searched further):
    ``input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`` is block ``input_blocks.1``. Names that are
    not block lists are skipped over (``final_layer.adaLN_modulation.1.weight`` is in no block).
    """
    parts = key.split(".")
    for i in range(len(parts) - 2):  # the index must be followed by a tensor name
        index = parts[i + 1]
        if parts[i] in _RANK and index.isascii() and index.isdigit():
            prefix = ".".join(parts[:i]) + "." if i else ""
            return prefix, parts[i], int(index)
    return None


def layout_from_header(entries: dict[str, dict[str, Any]], prefix: str = "") -> tuple[dict, int, int]:
    """``({(prefix, list, index): bytes}, other_bytes, excluded_bytes)`` of one header's entries."""
    blocks: dict[tuple[str, str, int], int] = {}
    other = excluded = 0
    for key, entry in entries.items():
        begin, end = entry["data_offsets"]
        if not key.startswith(prefix):
            excluded += end - begin
            continue
        where = block_of(key[len(prefix):])
        if where is None:
            other += end - begin
        else:
            blocks[where] = blocks.get(where, 0) + end - begin
    return blocks, other, excluded


def _execution_key(prefix: str, name: str, index: int) -> tuple:
    """Sort key in execution order: the rank of the outermost ranked name on the block's path, then the
    path with numbers compared as numbers. The header's alphabetical order plays no part."""
    path = prefix.split(".")[:-1] + [name]
    rank = next(_ORDER[part] for part in path if part in _ORDER)
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path)
    return rank, natural, index


def read_layout(paths: PathLike | Sequence[PathLike], prefix: str = "") -> FileLayout:
    """Blocks (execution order) and other bytes of one model file, or of several loaded as one model.

    Only keys under ``prefix`` count (``model.diffusion_model.`` picks a checkpoint's diffusion model); if
    no key of a file has it, the whole file counts. With several files, block names get ``<i>/`` in front
    (file order = the loader's input order), since two encoders may both have ``encoder.layers.0``.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    blocks: list[tuple[str, int]] = []
    other = excluded = 0
    for number, path in enumerate(paths):
        entries = read_header(path)
        use = prefix if any(k.startswith(prefix) for k in entries) else ""
        found, file_other, file_excluded = layout_from_header(entries, use)
        tag = f"{number}/" if len(paths) > 1 else ""
        ordered = sorted(found.items(), key=lambda item: _execution_key(*item[0]))
        blocks += [(f"{tag}{p}{name}.{index}", nbytes) for (p, name, index), nbytes in ordered]
        other, excluded = other + file_other, excluded + file_excluded
    return FileLayout(tuple(Path(p).name for p in paths), tuple(blocks), other, excluded)


def preview(
    path: PathLike | Sequence[PathLike],
    compute_device: str,
    device_totals: dict[str, int],
    allocation_text: str = "",
    virtual_vram_gb: float | None = 0.0,
    donor_device: str = "cpu",
    prefix: str = "",
    device_free: dict[str, int] | None = None,
) -> dict[str, Any]:
    """JSON-ready preview: bytes per device (compute resident, streamed per store) and the block plan.

    ``device_totals`` (canonical name -> total bytes) is both the memory sizes and the set of devices that
    exist. An allocation string wins over ``virtual_vram_gb``/``donor_device``, as in the loader nodes.
    Bad input raises the engine's own errors (AllocationError with token/position, DeviceError, BudgetError); a
    budget below the minimum is not an error: the preview shows the minimum plan and says so in ``warning``.
    """
    layout = read_layout(path, prefix)
    result: dict[str, Any] = {
        "files": list(layout.files), "model_bytes": layout.model_bytes, "other_bytes": layout.other_bytes,
        "excluded_bytes": layout.excluded_bytes, "block_count": len(layout.blocks),
    }
    from .devices import canonical_device  # torch is imported by devices only when a preview is asked for

    totals = {canonical_device(name): int(size) for name, size in device_totals.items()}
    request_args = (compute_device, virtual_vram_gb, donor_device, allocation_text or "")
    result.update(_planned(layout, totals, request_args, device_free))
    return result


def _planned(layout: FileLayout, totals: dict[str, int], request_args: tuple,
             device_free: dict[str, int] | None) -> dict[str, Any]:
    """The placement the loader nodes would plan for this file."""
    from .budget import StreamRequest, compute_shares, plan_auto, store_budgets
    from .planner import plan_placement

    request = StreamRequest(*request_args)
    if request.auto:
        # The real plan is made at each sampling run; the preview shows it for the memory free now, before
        # any activations (it cannot know the latent size).
        free = (device_free or totals).get(request.compute_device, 0)
        plan = plan_auto(request, layout.blocks, layout.other_bytes, free, 0, list(totals))
        return {**_plan_dict(plan, totals, free, [(request.donor_device, plan.streamed_bytes)]), "auto": True}
    compute, budget, shares = compute_shares(request, layout.model_bytes, totals.__getitem__, list(totals))
    plan = plan_placement(layout.blocks, layout.other_bytes, compute, budget,
                          store_budgets(shares),
                          ring_slots=request.ring_slots, keep_head_blocks=request.keep_head_blocks)
    return _plan_dict(plan, totals, budget, shares)


def _plan_dict(plan: Any, totals: dict[str, int], budget: int, shares: list[tuple[str, int]]) -> dict[str, Any]:
    """Devices as bars: the compute device's resident bytes, then each store's streamed bytes. A store may
    be the compute device itself (CPU compute streaming from a CPU arena), so entries are not keyed by name."""
    sizes = dict(plan.block_sizes)
    devices = [{"device": plan.compute_device, "role": "compute", "bytes": plan.resident_bytes,
                "ring_bytes": plan.ring_bytes, "blocks": len(plan.resident), "budget_bytes": budget,
                "total_bytes": totals.get(plan.compute_device)}]
    for store, share in shares:
        names = [name for name, where in plan.streamed if where == store]
        devices.append({"device": store, "role": "store", "bytes": sum(sizes[n] for n in names),
                        "blocks": len(names), "budget_bytes": share, "total_bytes": totals.get(store)})
    return {
        "compute_device": plan.compute_device, "devices": devices, "bytes_by_device": _by_device(devices),
        "plan": {"resident": list(plan.resident), "streamed": [list(pair) for pair in plan.streamed],
                 "ring_slots": plan.ring_slots, "slot_bytes": plan.slot_bytes, "table": plan.table()},
        "warning": plan.raised_message() or None,  # a budget below the minimum runs with the minimum
    }


def _by_device(devices: list[dict[str, Any]]) -> dict[str, int]:
    held: dict[str, int] = {}
    for entry in devices:
        held[entry["device"]] = held.get(entry["device"], 0) + entry["bytes"]
    return held


def tensor_bytes(paths: Iterable[PathLike]) -> int:
    """Sum of every tensor's bytes in the files' headers (what a preview's devices must add up to)."""
    return sum(end - begin for p in paths for (begin, end) in (e["data_offsets"] for e in read_header(p).values()))
