"""Quantized (GGUF) weights in the engine: raw GGML blocks kept as bytes, dequantized on the compute
device per layer, just before use, into reusable scratch memory.

- :mod:`.types`          the GGML type table (name, id, block size, bytes per block) and raw sizes
- :mod:`.dequant_torch`  pure-torch dequantizers, bitwise equal to ``gguf.quants.dequantize``
- :mod:`.dequant_triton` one-pass Triton kernels for CUDA (imported only when usable)
- :mod:`.tensor`         :class:`QuantSpec` and :func:`dequantize`, which picks Triton or torch
- :mod:`.scratch`        :class:`ScratchPool`, the reusable output buffers
"""
from .scratch import ScratchPool
from .tensor import QuantSpec, choose_backend, dequantize, has_triton_kernel, triton_usable
from .types import SUPPORTED_TYPES, GGMLType, block_count, ggml_type, raw_nbytes

__all__ = [
    "GGMLType", "QuantSpec", "SUPPORTED_TYPES", "ScratchPool", "block_count", "choose_backend", "dequantize",
    "ggml_type", "has_triton_kernel", "raw_nbytes", "triton_usable",
]
