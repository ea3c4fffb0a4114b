"""The server lists a device variant of every core loader, with the core inputs plus `device`."""
from __future__ import annotations

CORE_LOADERS = ["UNETLoader", "CheckpointLoaderSimple", "CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader",
                "QuadrupleCLIPLoader", "VAELoader", "CLIPVisionLoader", "ControlNetLoader", "DiffControlNetLoader"]


def _inputs(node: dict) -> dict:
    return {**node["input"].get("required", {}), **node["input"].get("optional", {})}


def _device_options(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


STREAMING_VARIANTS = {"UNETLoader": "DisTorchUNETLoader", "CheckpointLoaderSimple": "DisTorchCheckpointLoader",
                      "CLIPLoader": "DisTorchCLIPLoader", "DualCLIPLoader": "DisTorchDualCLIPLoader",
                      "TripleCLIPLoader": "DisTorchTripleCLIPLoader"}


def test_every_core_loader_has_a_device_variant_in_the_distorch_category(object_info: dict) -> None:
    """Classic and V3 core loaders alike (TripleCLIPLoader and QuadrupleCLIPLoader are V3 on newer hosts)."""
    missing_core = [name for name in CORE_LOADERS if name not in object_info]
    assert not missing_core, f"this ComfyUI lacks {missing_core}; both supported hosts have them all"
    for core in CORE_LOADERS:
        variant = object_info.get(f"{core}Device")
        assert variant is not None, f"{core}Device missing from /object_info"
        assert variant["category"] == "distorch/loaders"
        assert variant["display_name"].endswith("(device)")


def test_variant_requires_a_device_input_offering_cpu(object_info: dict) -> None:
    for core in (name for name in CORE_LOADERS if name in object_info):
        spec = object_info[f"{core}Device"]["input"]["required"]["device"]
        assert "cpu" in _device_options(spec)
        assert spec[1]["default"] in _device_options(spec)


def test_variant_keeps_core_inputs_and_outputs_but_replaces_the_core_device_input(object_info: dict) -> None:
    for core in (name for name in CORE_LOADERS if name in object_info):
        core_inputs, variant_inputs = _inputs(object_info[core]), _inputs(object_info[f"{core}Device"])
        assert set(variant_inputs) == set(core_inputs) | {"device"}
        for name, spec in core_inputs.items():
            if name != "device":  # the core's ["default", "cpu"] is replaced by the real device list
                assert variant_inputs[name][0] == spec[0], f"{core}.{name} differs"
        assert object_info[f"{core}Device"]["output"] == object_info[core]["output"]
        assert object_info[f"{core}Device"]["output_name"] == object_info[core]["output_name"]


def test_variant_lists_the_model_files_the_core_loader_sees(object_info: dict, models: dict) -> None:
    unet_files = object_info["UNETLoaderDevice"]["input"]["required"]["unet_name"][0]
    assert "distorch-tiny-flux.safetensors" in unet_files
    assert unet_files == object_info["UNETLoader"]["input"]["required"]["unet_name"][0]


def test_every_streaming_variant_is_listed_with_the_core_inputs_and_the_streaming_inputs(object_info: dict) -> None:
    streaming_inputs = {"compute_device", "virtual_vram_gb", "donor_device", "expert_allocation"}
    for core, variant_id in STREAMING_VARIANTS.items():
        variant = object_info.get(variant_id)
        assert variant is not None, f"{variant_id} missing from /object_info"
        assert variant["category"] == "distorch/streaming"
        assert set(_inputs(variant)) == (set(_inputs(object_info[core])) - {"device"}) | streaming_inputs
        assert variant["output"] == object_info[core]["output"]
