"""Page-locking host memory in place, through the CUDA driver API.

The runtime's ``cudaHostRegister`` records a failure (memory already registered, a locked-memory limit) as the
runtime's *last error*, and PyTorch checks that error after every kernel launch: one refused registration would
make the next, unrelated kernel raise. The driver's ``cuMemHostRegister`` reports the same failures through its
return value only. With ``CU_MEMHOSTREGISTER_PORTABLE`` the pages are locked for every CUDA context, so the
runtime's copies (PyTorch's ``copy_(non_blocking=True)``) see them as pinned memory.
"""
from __future__ import annotations

import ctypes
import functools

import torch

PORTABLE = 1  # CU_MEMHOSTREGISTER_PORTABLE
ALREADY_REGISTERED = 712  # CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED (the runtime uses the same number)


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
    lib.cuMemHostUnregister.argtypes = [ctypes.c_void_p]
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def _message(code: int) -> str:
    text = ctypes.c_char_p()
    _driver().cuGetErrorString(code, ctypes.byref(text))
    return (text.value or b"unknown error").decode()


def register(pointer: int, nbytes: int) -> str | None:
    """Lock ``nbytes`` at ``pointer`` in place; None on success, else why not (nothing else is affected)."""
    torch.cuda.init()  # the driver call needs the primary context current on this thread
    code = int(_driver().cuMemHostRegister_v2(pointer, nbytes, PORTABLE))
    return None if code == 0 else f"cuMemHostRegister failed with error {code} ({_message(code)})"


def unregister(pointer: int) -> int:
    """Unlock what :func:`register` locked at ``pointer``; the driver's error code (0 on success)."""
    return int(_driver().cuMemHostUnregister(pointer))


def is_registered(pointer: int) -> bool:
    """Whether the page at ``pointer`` is locked already: registering it again is refused exactly then."""
    torch.cuda.init()
    code = int(_driver().cuMemHostRegister_v2(pointer, 1, 0))
    if code == 0:
        unregister(pointer)
    return code == ALREADY_REGISTERED
