"""A placement preview from a .safetensors file's header alone: what the DisTorch loaders would do, before
loading anything.

Only the header is read (distorch.safetensors_header), so a 24 GB model previews in milliseconds and
without RAM.

Blocks are found by key pattern ``<prefix><list>.<index>.`` where ``<list>`` is a known block-list name
(``double_blocks``, ``input_blocks``, ``encoder.layers`` ...). The header's key order is useless for
execution order: safetensors writers sort tensors by name (the ``safetensors`` library by dtype alignment,
then alphabetically), so ``single_blocks.10`` precedes ``single_blocks.2`` and ``double_blocks`` precedes
``input_blocks`` whatever the model runs first. Order therefore comes from :data:`BLOCK_LISTS` (the rank of
the list name), then the numeric index.

Bytes are the bytes the loader will hold, not the file's: ComfyUI stores a model's floating tensors in the
dtype it picks for the device (fp32 on a CPU, a loader's ``weight_dtype``...), so the caller passes that dtype
per file (``load_dtypes``; nodes/comfy_adapter asks ComfyUI), and each tensor of a block is counted at its
256-byte aligned size, as distorch.layout packs it. With the dtype given, a plan from a header equals the
plan the loader makes from the loaded module for every budget, with two things the header cannot show: a few
bytes of buffers ComfyUI adds outside the blocks (e.g. a model's sigma table), and on a GPU the activation
reserve the loader keeps free beside the weights. Both add to the budget and to the need alike, so they only
matter where the loader caps a budget at the device's total memory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .budget import StreamRequest, compute_shares, plan_auto, store_budgets
from .devices import canonical_device
from .layout import align_up
from .planner import minimum_weight_budget, plan_placement
from .safetensors_header import (DTYPE_BYTES, DTYPE_LABELS, FLOAT_DTYPES, HeaderError, PathLike, entry_bytes,
                                 read_header, tensor_bytes)

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
# ComfyUI's UNet keeps a TimestepEmbedSequential in each element of these lists and runs its layers one by one,
# so the engine's blocks are the layers (distorch.layout): ``input_blocks.1.1``, not ``input_blocks.1``.
SEQUENTIAL_LISTS = frozenset({"input_blocks", "output_blocks"})
_RANK = {name: float(rank) for rank, name in enumerate(BLOCK_LISTS)}
_ORDER = {**_RANK, **{name: _RANK[after] + 0.5 for name, after in CONTAINERS_AFTER.items()}}

@dataclass(frozen=True)
class FileLayout:
    """A model's blocks in execution order and the bytes outside them, as loaded; ``file_bytes`` are the
    same tensors' bytes in the files, ``excluded_bytes`` the files' bytes outside ``prefix``."""

    files: tuple[str, ...]
    blocks: tuple[tuple[str, int], ...]
    other_bytes: int
    excluded_bytes: int = 0
    file_bytes: int = 0

    @property
    def model_bytes(self) -> int:
        return self.other_bytes + sum(n for _, n in self.blocks)


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def block_of(key: str) -> tuple[str, str, tuple[int, ...]] | None:
    """``(prefix, list name, indices)`` of the block holding tensor ``key``, or None outside blocks.

    The outermost known list wins, as in distorch.layout (a found block is not searched further), and in the
    UNet's :data:`SEQUENTIAL_LISTS` a block is one layer of an element:
    ``input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`` is block ``input_blocks.1.1``. Names that are
    not block lists are skipped over (``final_layer.adaLN_modulation.1.weight`` is in no block).
    """
    parts = key.split(".")
    for i in range(len(parts) - 2):  # the index must be followed by a tensor name
        if parts[i] in _RANK and _is_index(parts[i + 1]):
            prefix = ".".join(parts[:i]) + "." if i else ""
            indices = (int(parts[i + 1]),)
            if parts[i] in SEQUENTIAL_LISTS and i + 3 < len(parts) and _is_index(parts[i + 2]):
                indices += (int(parts[i + 2]),)
            return prefix, parts[i], indices
    return None


def loaded_bytes(entry: dict[str, Any], load_dtype: str | None) -> int:
    """Bytes of one header entry once loaded: a floating tensor in ``load_dtype`` (None: as in the file)."""
    if load_dtype is None or entry.get("dtype") not in FLOAT_DTYPES:
        return entry_bytes(entry)
    return math.prod(entry["shape"]) * DTYPE_BYTES[load_dtype]


def layout_from_header(entries: dict[str, dict[str, Any]], prefix: str = "",
                       load_dtype: str | None = None) -> tuple[dict, int, int]:
    """``({(prefix, list, indices): bytes}, other_bytes, excluded_bytes)`` of one header's entries, as loaded.

    A block's bytes are its floating tensors each at its aligned size (how distorch.layout packs them);
    anything else under ``prefix`` is other bytes, integer tensors in blocks too (the engine leaves those
    where they are).
    """
    blocks: dict[tuple[str, str, tuple[int, ...]], int] = {}
    other = excluded = 0
    for key, entry in entries.items():
        if not key.startswith(prefix):
            excluded += entry_bytes(entry)
            continue
        nbytes = loaded_bytes(entry, load_dtype)
        where = block_of(key[len(prefix):])
        if where is None or entry.get("dtype") not in FLOAT_DTYPES:
            other += nbytes
        else:
            blocks[where] = blocks.get(where, 0) + align_up(nbytes)
    return blocks, other, excluded


def _block_name(prefix: str, name: str, indices: tuple[int, ...]) -> str:
    return f"{prefix}{name}." + ".".join(map(str, indices))


def _execution_key(prefix: str, name: str, indices: tuple[int, ...]) -> tuple:
    """Sort key in execution order: the rank of the outermost ranked name on the block's path, then the
    path with numbers compared as numbers. The header's alphabetical order plays no part."""
    path = prefix.split(".")[:-1] + [name]
    rank = next(_ORDER[part] for part in path if part in _ORDER)
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path)
    return rank, natural, indices


def read_layout(paths: PathLike | Sequence[PathLike], prefix: str = "",
                load_dtypes: Sequence[str | None] | None = None) -> FileLayout:
    """Blocks (execution order) and other bytes of one model file, or of several loaded as one model.

    Only keys under ``prefix`` count (``model.diffusion_model.`` picks a checkpoint's diffusion model); if
    no key of a file has it, the whole file counts. With several files, block names get ``<i>/`` in front
    (file order = the loader's input order), since two encoders may both have ``encoder.layers.0``.
    ``load_dtypes`` holds one safetensors dtype name per file (None: that file's tensors load as stored).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    dtypes = list(load_dtypes) if load_dtypes is not None else [None] * len(paths)
    if len(dtypes) != len(paths) or any(d is not None and d not in FLOAT_DTYPES for d in dtypes):
        raise ValueError(f"load_dtypes must name one floating dtype (or None) per file, got {load_dtypes!r}")
    blocks: list[tuple[str, int]] = []
    other = excluded = file_bytes = 0
    for number, (path, dtype) in enumerate(zip(paths, dtypes)):
        entries = read_header(path)
        use = prefix if any(k.startswith(prefix) for k in entries) else ""
        found, file_other, file_excluded = layout_from_header(entries, use, dtype)
        tag = f"{number}/" if len(paths) > 1 else ""
        ordered = sorted(found.items(), key=lambda item: _execution_key(*item[0]))
        blocks += [(tag + _block_name(*where), nbytes) for where, nbytes in ordered]
        other, excluded = other + file_other, excluded + file_excluded
        file_bytes += sum(entry_bytes(e) for k, e in entries.items() if k.startswith(use))
    return FileLayout(tuple(Path(p).name for p in paths), tuple(blocks), other, excluded, file_bytes)


def preview(
    path: PathLike | Sequence[PathLike],
    compute_device: str,
    device_totals: dict[str, int],
    allocation_text: str = "",
    virtual_vram_gb: float | None = 0.0,
    donor_device: str = "cpu",
    prefix: str = "",
    device_free: dict[str, int] | None = None,
    load_dtypes: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """JSON-ready preview: bytes per device (compute resident, streamed per store) and the block plan.

    ``device_totals`` (canonical name -> total bytes) is both the memory sizes and the set of devices that
    exist. An allocation string wins over ``virtual_vram_gb``/``donor_device``, as in the loader nodes.
    ``load_dtypes``: the dtype ComfyUI will load each file's floating tensors in (see :func:`read_layout`).
    ``device_free``: bytes free per device now, for the automatic budget (default: the totals).
    Bad input raises the engine's own errors (AllocationError with token/position, DeviceError, BudgetError); a
    budget below the minimum is not an error: the preview shows the minimum plan and says so in ``warning``.
    """
    layout = read_layout(path, prefix, load_dtypes)
    result: dict[str, Any] = {
        "files": list(layout.files), "model_bytes": layout.model_bytes, "other_bytes": layout.other_bytes,
        "excluded_bytes": layout.excluded_bytes, "file_bytes": layout.file_bytes,
        "block_count": len(layout.blocks),
        "loaded_as": [DTYPE_LABELS[d] if d else None for d in (load_dtypes or [None] * len(layout.files))],
    }
    totals = {canonical_device(name): int(size) for name, size in device_totals.items()}
    request_args = (compute_device, virtual_vram_gb, donor_device, allocation_text or "")
    result.update(_planned(layout, totals, request_args, device_free))
    return result


def _planned(layout: FileLayout, totals: dict[str, int], request_args: tuple,
             device_free: dict[str, int] | None) -> dict[str, Any]:
    """The placement the loader nodes would plan for this file."""
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
    result = _plan_dict(plan, totals, budget, shares)
    result["minimum_budget_bytes"] = minimum_weight_budget(
        layout.blocks, layout.other_bytes, request.ring_slots, request.keep_head_blocks)
    return result


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


__all__ = ["BLOCK_LISTS", "FileLayout", "HeaderError", "block_of", "layout_from_header", "loaded_bytes", "preview",
           "read_header", "read_layout", "tensor_bytes"]
