"""Load, sample and unload a streamed model again and again in process: nothing of it stays behind.

Our part of the soak test's memory check, in process (tests/host/test_soak.py checks a whole server, whose RSS
also carries ComfyUI's own residue): after warm-up cycles, every later cycle ends with the same live tensors
(count and bytes) and the process's RSS within 1% of where it was.
"""
from __future__ import annotations

import gc
import os

import psutil
import torch


def _node(comfy_nodes, node_id: str, **inputs):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def _live_tensors() -> tuple[int, int]:
    count = nbytes = 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            count += 1
            nbytes += obj.untyped_storage().nbytes()
    return count, nbytes


def test_cycles_of_streamed_load_sample_unload_leave_nothing_behind(comfy_nodes) -> None:
    import comfy.model_management as mm

    _, clip, _ = _node(comfy_nodes, "CheckpointLoaderSimple", ckpt_name="distorch-tiny-sd15.safetensors")
    (pos,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="a cat")
    (neg,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="")
    device = str(mm.get_torch_device())

    def cycle(index: int) -> None:
        model, _, _ = _node(comfy_nodes, "DisTorchCheckpointLoader", ckpt_name="distorch-tiny-sd15.safetensors",
                            compute_device=device, virtual_vram_gb=("0.02", "0.05")[index % 2], donor_device="cpu",
                            expert_allocation="")
        comfy_nodes.common_ksampler(model, index, 2, 3.0, "euler", "simple", pos, neg,
                                    {"samples": torch.zeros(1, 4, 8, 8)})
        mm.unload_all_models()
        mm.cleanup_models()
        gc.collect()

    for index in range(3):  # warm-up: imports, kernels, thread pools, allocator pools
        cycle(index)
    process = psutil.Process(os.getpid())
    tensors, rss = _live_tensors(), process.memory_info().rss
    for index in range(3, 9):
        cycle(index)
    assert _live_tensors() == tensors
    assert process.memory_info().rss <= rss * 1.01
