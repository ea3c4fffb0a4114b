"""Every ComfyUI name this package touches, listed once: the API surface checked on each host.

`tests/host/test_api_surface.py` resolves each entry on the ComfyUI it runs against (modules, classes,
functions, methods, instance attributes) and checks that our calls still bind to the host's signatures and
that our ModelPatcher overrides still accept every argument the host may pass. It also reads our sources
and fails when they use a ComfyUI name that is not listed here. So the next ComfyUI change fails loudly in one
place, not silently at a user's prompt.

Path syntax: ``module.Class.attr`` for module-level and class-level names; ``module.Class#attr`` for an
attribute that instances get in ``__init__`` (``#model.attr``: an attribute the patcher's model gets).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Name:
    path: str
    why: str
    call: tuple[int, tuple[str, ...]] | None = None  # how we call it: (positional args, keyword names)
    override: bool = False  # StreamingModelPatcher overrides it: ours must accept whatever the host passes
    optional: bool = False  # feature-detected where used: absent on some hosts, and that is handled


MP = "comfy.model_patcher.ModelPatcher"

SURFACE: tuple[Name, ...] = (
    # --- finding and calling core nodes (comfy_adapter) ------------------------------------------------
    Name("nodes.NODE_CLASS_MAPPINGS", "core node classes, by name"),
    Name("comfy_api.latest.io.ComfyNode.define_schema", "tells V3 nodes from classic ones", optional=True),
    Name("comfy_api.latest.io.ComfyNode.GET_SCHEMA", "tells V3 nodes from classic ones", optional=True),
    Name("comfy_api.latest.io.ComfyNode.INPUT_TYPES", "a V3 node's inputs, classic form", call=(0, ()),
         optional=True),
    Name("comfy_api.latest.io.ComfyNode.PREPARE_CLASS_CLONE", "runs a V3 node as the executor does",
         call=(1, ()), optional=True),
    Name("comfy_api.latest.io.ComfyNode.execute", "runs a V3 node", optional=True),
    Name("comfy_api.latest.io.ComfyNode.RETURN_TYPES", "a V3 node's outputs, classic form", optional=True),
    Name("nodes.UNETLoader.INPUT_TYPES", "a classic node's inputs", call=(0, ())),
    Name("nodes.UNETLoader.FUNCTION", "a classic node's entry point"),
    Name("nodes.UNETLoader.RETURN_TYPES", "a classic node's outputs"),
    Name("folder_paths.get_filename_list", "model files a preview may read", call=(1, ())),
    Name("folder_paths.get_full_path", "model files a preview may read", call=(2, ())),
    Name("server.PromptServer", "our HTTP routes go on the running server's route table"),
    # --- what core loaders return, retargeted by duck typing (comfy_adapter.place_on_device) -------------
    Name("comfy.sd.CLIP#cond_stage_model", "recognises a CLIP"),
    Name("comfy.sd.CLIP#patcher", "a CLIP's ModelPatcher: retargeted, or streamed"),
    Name("comfy.sd.CLIP.clone", "a streamed CLIP is a clone with our patcher", call=(0, ())),
    Name("comfy.sd.VAE#first_stage_model", "recognises a VAE"),
    Name("comfy.sd.VAE#patcher", "a VAE's ModelPatcher"),
    Name("comfy.sd.VAE#device", "VAE.decode/encode move latents here"),
    Name("comfy.clip_vision.ClipVisionModel.encode_image", "recognises a CLIP vision model"),
    Name("comfy.clip_vision.ClipVisionModel#patcher", "its ModelPatcher"),
    Name("comfy.clip_vision.ClipVisionModel#load_device", "encode_image moves pixels here"),
    Name("comfy.clip_vision.ClipVisionModel#model", "the module its patcher holds"),
    Name("comfy.model_patcher.ModelPatcherDynamic.register_load_device", "per-device pin state when retargeted",
         call=(1, ()), optional=True),
    Name("comfy.controlnet.ControlNet.get_control", "recognises a ControlNet"),
    Name("comfy.controlnet.ControlNet.set_cond_hint", "recognises a ControlNet"),
    Name("comfy.controlnet.ControlNet#load_device", "where a ControlNet computes"),
    Name("comfy.controlnet.ControlNet#control_model_wrapped", "a ControlNet's ModelPatcher"),
    Name("comfy.controlnet.T2IAdapter", "T2I adapters keep a plain device attribute"),
    Name("comfy.model_base.BaseModel.memory_required", "activation memory of a batched cond+uncond forward",
         call=(1, ())),
    Name("comfy.model_base.BaseModel#latent_format", "latent channels for that estimate"),
    Name("comfy.model_base.BaseModel#diffusion_model", "one call of it is one model forward"),
    # --- memory generations -----------------------------------------------------------------------------
    Name("comfy.memory_management.aimdo_enabled", "Dynamic VRAM on or off (newer ComfyUI)", optional=True),
    Name("comfy.model_patcher.ModelPatcherDynamic", "Dynamic VRAM's patcher (newer ComfyUI)", optional=True),
    Name("comfy.model_management.current_loaded_models", "unloading a model before retargeting it"),
    Name("comfy.model_management.LoadedModel#model", "unloading a model before retargeting it"),
    Name("comfy.model_management.LoadedModel.model_unload", "unloading a model before retargeting it",
         call=(0, ())),
    Name("comfy.model_management.module_size", "host RAM a streaming model holds", call=(1, ())),
    # --- the dtype a loader will load a file in (plan previews) --------------------------------------------
    Name("comfy.model_detection.unet_prefix_from_state_dict", "where a checkpoint's diffusion model is", call=(1, ())),
    Name("comfy.model_detection.model_config_from_unet", "the model type, from a header", call=(2, ())),
    Name("comfy.utils.calculate_parameters", "parameter count for unet_dtype", call=(2, ())),
    Name("comfy.utils.weight_dtype", "the stored dtype", call=(2, ())),
    Name("comfy.model_management.unet_dtype", "the diffusion model's load dtype",
         call=(0, ("model_params", "supported_dtypes", "weight_dtype"))),
    Name("comfy.model_management.text_encoder_device", "the text encoders' device", call=(0, ())),
    Name("comfy.model_management.text_encoder_dtype", "the text encoders' dtype", call=(1, ())),
    Name("comfy.model_management.pick_weight_dtype", "keeps a smaller stored dtype", call=(3, ()), optional=True),
    Name("comfy.supported_models_base.BASE.supported_inference_dtypes", "dtypes a model type runs in"),
    # --- the automatic budget ---------------------------------------------------------------------------
    Name("comfy.model_management.get_free_memory", "VRAM free when a model loads for sampling", call=(1, ())),
    Name("comfy.model_management.extra_reserved_memory", "ComfyUI's reserved VRAM, kept free", call=(0, ())),
    Name("comfy.samplers.CFGGuider#cfg", "cfg 1 skips the uncond forward"),
    Name("comfy.samplers.CFGGuider#original_conds", "how many conds share one forward"),
    Name("comfy.samplers.CFGGuider#model_options", "disable_cfg1_optimization"),
    Name("comfy.sampler_helpers.get_additional_models", "the cond keys a run's own models come from (ControlNets...)"),
    # --- the ModelPatcher base of StreamingModelPatcher ----------------------------------------------------
    Name(MP, "base class of StreamingModelPatcher", call=(3, ("weight_inplace_update",))),
    Name(f"{MP}.clone", "a clone shares the engine", override=True),
    Name(f"{MP}.model_size", "tells the memory manager our device footprint", override=True),
    Name(f"{MP}.get_ram_usage", "host RAM for ComfyUI 0.3's RAM cache", override=True, optional=True),
    Name(f"{MP}.get_free_memory", "what calc_cond_batch asks before batching conds (newer ComfyUI)",
         call=(1, ()), override=True, optional=True),
    Name(f"{MP}.load", "hands placement to the engine", override=True),
    Name(f"{MP}.partially_load", "the memory manager's load entry", override=True),
    Name(f"{MP}.partially_unload", "a fixed plan gives back nothing partially", override=True),
    Name(f"{MP}.unpatch_model", "unload: the engine gives back everything", override=True),
    Name(f"{MP}.detach", "wrap() takes the model over from the core loader's patcher", call=(0, ())),
    Name(f"{MP}.use_ejected", "ComfyUI's injection bracket around loads", call=(0, ("skip_and_inject_on_exit_only",))),
    Name(f"{MP}.eject_model", "unload", call=(0, ())),
    Name(f"{MP}.unpatch_hooks", "hook patches are redone around loads", call=(0, ())),
    Name(f"{MP}.apply_hooks", "hook patches forced on CLIP", call=(1, ("force_apply",))),
    Name(f"{MP}.patch_model", "object patches before a load", call=(0, ("load_weights",))),
    Name(f"{MP}.patch_weight_to_device", "LoRA computed by ComfyUI's own code", call=(1, ("device_to",))),
    Name(f"{MP}.get_all_callbacks", "ON_LOAD callbacks run as a core load runs them", call=(1, ())),
    Name(f"{MP}.add_wrapper_with_key", "per-prompt telemetry", call=(3, ())),
    Name(f"{MP}.remove_wrappers_with_key", "a deep clone reports from its own engine", call=(2, ())),
    Name(f"{MP}#model", "the model"),
    Name(f"{MP}#load_device", "the compute device"),
    Name(f"{MP}#offload_device", "where an unloaded model lives"),
    Name(f"{MP}#patches", "weight patches (LoRA)"),
    Name(f"{MP}#patches_uuid", "which patch set is applied"),
    Name(f"{MP}#backup", "original weights under patches"),
    Name(f"{MP}#object_patches", "object patches"),
    Name(f"{MP}#object_patches_backup", "object patches undone at unload"),
    Name(f"{MP}#model_options", "sampling options travel with the patcher"),
    Name(f"{MP}#weight_inplace_update", "how patched weights are written"),
    Name(f"{MP}#forced_hooks", "hook patches forced on CLIP"),
    Name(f"{MP}#model.device", "where the model computes"),
    Name(f"{MP}#model.model_lowvram", "a streaming model is not ComfyUI-lowvram"),
    Name(f"{MP}#model.lowvram_patch_counter", "no lowvram patches"),
    Name(f"{MP}#model.model_loaded_weight_memory", "bytes the memory manager sees on the device"),
    Name(f"{MP}#model.model_offload_buffer_memory", "no core offload buffers"),
    Name(f"{MP}#model.current_weight_patches_uuid", "which patch set the weights hold"),
    Name("comfy.patcher_extension.WrappersMP.OUTER_SAMPLE", "per-prompt telemetry"),
    Name("comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE", "a run's conds go to the compute device once"),
    Name("comfy.samplers.CFGGuider.inner_sample", "sets the run's processed conds (guider.conds) before the "
         "SAMPLER_SAMPLE wrappers run: those are staged on the compute device"),
    Name("comfy.conds.CONDRegular", "conds whose tensor may live on the compute device"),
    Name("comfy.conds.CONDNoiseShape", "conds whose tensor may live on the compute device"),
    Name("comfy.conds.CONDCrossAttn", "conds whose tensor may live on the compute device"),
    Name("comfy.conds.CONDRegular._copy_with", "a staged cond is a new object", call=(1, ())),
    Name("comfy.patcher_extension.CallbacksMP.ON_LOAD", "ON_LOAD callbacks"),
    Name("comfy.utils.get_attr", "a weight by its patch key", call=(2, ())),
    Name("comfy.utils.set_attr", "puts the streamed Parameter object back", call=(3, ())),
    Name("comfy.utils.set_attr_param", "restores a resident weight", call=(3, ())),
    Name("comfy.utils.copy_to_param", "restores a resident weight in place", call=(3, ())),
    # --- GGUF loaders (gguf_loaders, gguf_ops, comfy_adapter) -------------------------------------------------
    Name("folder_paths.folder_names_and_paths", "a .gguf-only key sharing a model kind's folder list"),
    Name("folder_paths.get_folder_paths", "the folders walked when that key cannot be registered", call=(1, ())),
    Name("comfy.utils.load_torch_file", "a safetensors text encoder beside a GGUF one", call=(1, ("safe_load",))),
    Name("comfy.sd.load_diffusion_model_state_dict", "detects and builds a diffusion model from GGUF stand-ins",
         call=(1, ("model_options",))),
    Name("comfy.sd.load_text_encoder_state_dicts", "detects and builds text encoders from GGUF stand-ins",
         call=(0, ("state_dicts", "embedding_directory", "clip_type", "model_options"))),
    Name("comfy.sd.CLIPType", "the core CLIP loaders' type input, by name"),
    Name("comfy.sd.CLIPType.STABLE_DIFFUSION", "the core CLIP loaders' default type"),
    Name("comfy.model_management.text_encoder_offload_device", "where GGUF text encoders are built", call=(0, ())),
    Name("comfy.patcher_extension.CallbacksMP.ON_DETACH", "the dequantization scratch is freed on unload"),
    Name(f"{MP}.add_callback_with_key", "the dequantization scratch is freed on unload", call=(3, ())),
    Name("comfy.model_base.BaseModel.get_dtype", "the compute dtype the scratch is sized for", call=(0, ())),
    Name("comfy.model_base.BaseModel#manual_cast_dtype", "the compute dtype the scratch is sized for"),
    Name("comfy.lora.calculate_weight", "LoRA on a quantized weight, after dequantization", call=(3, ())),
    Name("comfy.ops.manual_cast", "base of the GGUF operations: plain weights cast per forward"),
    Name("comfy.ops.CastWeightBiasOp.weight_function", "weight functions, applied after dequantization"),
    Name("comfy.ops.CastWeightBiasOp.bias_function", "bias functions, applied after dequantization"),
    Name("comfy.ops.manual_cast.Linear", "quantized Linear's base"),
    Name("comfy.ops.manual_cast.Linear.forward_comfy_cast_weights", "plain Linear weights", call=(1, ())),
    Name("comfy.ops.manual_cast.Conv1d", "quantized Conv1d's base"),
    Name("comfy.ops.manual_cast.Conv2d", "quantized Conv2d's base"),
    Name("comfy.ops.manual_cast.Conv3d", "quantized Conv3d's base"),
    Name("comfy.ops.manual_cast.Conv2d.forward_comfy_cast_weights", "plain convolution weights", call=(1, ())),
    Name("comfy.ops.manual_cast.Embedding", "quantized Embedding's base"),
    Name("comfy.ops.manual_cast.Embedding.forward_comfy_cast_weights", "plain embedding tables",
         call=(1, ("out_dtype",))),
    Name("comfy.ops.manual_cast.LayerNorm", "norms: a quantized weight is dequantized at load"),
    Name("comfy.ops.manual_cast.GroupNorm", "norms: a quantized weight is dequantized at load"),
    Name("comfy.ops.manual_cast.RMSNorm", "norms: a quantized weight is dequantized at load"),
    Name("comfy.ops.manual_cast.ConvTranspose1d", "a quantized weight is dequantized at load"),
    Name("comfy.ops.manual_cast.ConvTranspose2d", "a quantized weight is dequantized at load"),
    Name("comfy.ops.manual_cast.BatchNorm2d", "a quantized weight is dequantized at load", optional=True),
)
