"""Random-weight checkpoints with real ComfyUI architectures (see scripts/synth_models.py)."""
