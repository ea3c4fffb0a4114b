"""The ComfyUI boundary: node classes, collected from one module per node family.

The GGUF loaders register only where the ``gguf`` package imports (ComfyUI-GGUF users have it; it is declared in
pyproject.toml): without it they are left out and the log says why.
"""
import logging

from . import device_loaders, distorch_loaders, routes

log = logging.getLogger("distorch")
NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _gguf_unavailable() -> str | None:
    """Why the ``gguf`` package cannot be used here, or None when it can."""
    try:
        import gguf  # noqa: F401
    except Exception as error:  # missing, or broken by its own dependencies
        return f"{type(error).__name__}: {error}"
    return None


_families = [device_loaders, distorch_loaders, routes]
_why_no_gguf = _gguf_unavailable()
if _why_no_gguf is None:
    from . import gguf_loaders

    _families.append(gguf_loaders)
else:
    log.warning("[DisTorch] GGUF loaders not registered: the gguf package does not import (%s); "
                "pip install gguf to use them", _why_no_gguf)

for _module in _families:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
