"""comfyui-distorch: run diffusion models bigger than VRAM by streaming offloaded weights to the compute GPU.

ComfyUI imports this package from custom_nodes/ and reads the three names below.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
