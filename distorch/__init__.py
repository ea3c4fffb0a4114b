"""DisTorch: split a model's weights across several devices (GPUs, CPU) for ComfyUI."""
