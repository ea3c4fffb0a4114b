"""Everything the loaders and the preview need to know about ComfyUI internals, in one place.

Every check is a feature test (``hasattr``, try-import), never a version comparison, so the same code
serves ComfyUI 0.3.x (classic ``ModelPatcher``) and newer trees (``comfy.memory_management``,
``ModelPatcherDynamic``). What the loaders get from here:

* :func:`core_node` / :func:`input_schema` / :func:`return_spec` / :func:`call_core`: find a core
  node by name and use it the same way whether it is a classic node (``INPUT_TYPES``/``FUNCTION``)
  or a V3 ``io.ComfyNode`` (``define_schema``/``execute``, e.g. ``TripleCLIPLoader``).
* :func:`place_on_device`: retarget what a core loader returned (``ModelPatcher``, ``CLIP``,
  ``VAE``, ``CLIPVision``, ControlNet) so that ComfyUI's own ``load_models_gpu`` later puts its
  weights on the chosen device. The device is stored on the returned object itself (its patcher's
  ``load_device``), never in module state, so two loaders with two devices cannot interfere.
* :func:`diffusion_model_load_dtype` / :func:`text_encoder_load_dtype`: the dtype ComfyUI will store a
  model file's weights in, asked of ComfyUI from the file's header alone (for the plan preview).
* :func:`gguf_files` / :func:`model_path` / :func:`load_diffusion_state_dict` / :func:`load_text_encoders`:
  ``.gguf`` files in the usual model folders, and ComfyUI's own state-dict loaders with custom operations
  (the GGUF loaders).
* :func:`free_vram` / :func:`reserved_vram` / :func:`forward_shape` / :func:`activation_bytes` /
  :func:`memory_path`: what the automatic budget and the plan table ask of ComfyUI.

It is longer than the project's other modules on purpose: keeping every question asked of ComfyUI in one file
(with its names listed in ``comfy_surface.py``) is what lets a ComfyUI change fail in one place.

Limits, stated rather than hidden: the core loader picks dtypes (and, for a text encoder, an initial
device) for ComfyUI's default device before we retarget; a ControlNet runs on the device of the
latents it is applied to, so it should share the diffusion model's device.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..distorch.safetensors_header import TORCH_DTYPES

log = logging.getLogger("distorch")
_OUR_NODES_DIR = Path(__file__).resolve().parent
_CPU = torch.device("cpu")


def comfy_nodes_module() -> Any:
    """ComfyUI's top-level ``nodes`` module (NODE_CLASS_MAPPINGS of core and loaded nodes).

    Our own package also has a ``nodes`` folder; inside ComfyUI that is imported as
    ``<custom node module>.nodes``, so the top-level name is ComfyUI's. Refuse loudly if it is not.
    """
    comfy_nodes = importlib.import_module("nodes")
    origin = Path(getattr(comfy_nodes, "__file__", "") or "").resolve()
    if origin.parent == _OUR_NODES_DIR or not hasattr(comfy_nodes, "NODE_CLASS_MAPPINGS"):
        raise ImportError(f"top-level 'nodes' is {origin}, not ComfyUI's nodes.py; import ComfyUI first")
    return comfy_nodes


def core_node(name: str) -> type | None:
    """The node class ComfyUI registered as ``name``, or None if this ComfyUI has no such node."""
    return comfy_nodes_module().NODE_CLASS_MAPPINGS.get(name)


def is_v3(node_cls: type) -> bool:
    """True for V3 ``io.ComfyNode`` classes (schema object, classmethod ``execute``)."""
    return hasattr(node_cls, "define_schema") and hasattr(node_cls, "GET_SCHEMA")


def input_schema(node_cls: type) -> dict[str, dict[str, Any]]:
    """A fresh copy of the node's ``INPUT_TYPES`` sections (required/optional[/hidden]).

    Called on every ``/object_info`` request by the variants, so new model files show up. V3 hidden
    inputs are dropped: V3 nodes receive them through ``cls.hidden``, not as arguments.
    """
    if is_v3(node_cls) and "include_hidden" in inspect.signature(node_cls.INPUT_TYPES).parameters:
        schema = node_cls.INPUT_TYPES(include_hidden=False)  # the V3 API of ComfyUI 0.3.x
    else:
        schema = node_cls.INPUT_TYPES()  # classic nodes; V3 nodes of newer ComfyUI (no include_hidden)
    if is_v3(node_cls):
        schema = {section: entries for section, entries in schema.items() if section != "hidden"}
    return {section: dict(entries) for section, entries in schema.items()}


def return_spec(node_cls: type) -> tuple[tuple[str, ...], tuple[str, ...] | None, tuple | None]:
    """``(RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS)``; V3 classes compute these from their schema."""
    types = tuple(node_cls.RETURN_TYPES)
    names = getattr(node_cls, "RETURN_NAMES", None)
    tips = getattr(node_cls, "OUTPUT_TOOLTIPS", None)
    return types, tuple(names) if names else None, tuple(tips) if tips else None


def device_option(node_cls: type) -> tuple[str, list] | None:
    """``(section, options)`` of the core node's own ``device`` combo (CLIP loaders), or None."""
    for section, entries in input_schema(node_cls).items():
        options = combo_options(entries.get("device"))
        if options is not None:
            return section, options
    return None


def combo_options(spec: Any) -> list | None:
    """Options of a combo input spec: classic ``([a, b], {...})`` or V3 ``("COMBO", {"options": [...]})``."""
    if not spec:
        return None
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return None


def call_core(node_cls: type, kwargs: dict[str, Any]) -> tuple:
    """Run the core node with ``kwargs`` and return its outputs as a tuple."""
    if is_v3(node_cls):
        # A class clone with empty hidden inputs, as ComfyUI's executor does, so nothing leaks into the class.
        target = node_cls.PREPARE_CLASS_CLONE({}) if hasattr(node_cls, "PREPARE_CLASS_CLONE") else node_cls
        result = target.execute(**kwargs)
    else:
        result = getattr(node_cls(), node_cls.FUNCTION)(**kwargs)
    if inspect.isawaitable(result):
        raise TypeError(f"{node_cls.__name__} is asynchronous; device variants of async loaders are not supported")
    return _as_tuple(node_cls, result)


def _as_tuple(node_cls: type, result: Any) -> tuple:
    if hasattr(result, "args") and hasattr(result, "ui"):  # V3 NodeOutput
        return tuple(result.args)
    if isinstance(result, dict) and "result" in result:
        return tuple(result["result"])
    if isinstance(result, (tuple, list)):
        return tuple(result)
    raise TypeError(f"{node_cls.__name__} returned {type(result).__name__}, expected a tuple of outputs")


def memory_path() -> str:
    """Which memory-management generation this ComfyUI runs, for the log."""
    try:
        memory_management = importlib.import_module("comfy.memory_management")
    except ImportError:
        return "classic ModelPatcher (this ComfyUI has no Dynamic VRAM)"
    if getattr(memory_management, "aimdo_enabled", False):
        return "Dynamic VRAM on (comfy-aimdo; core models load as ModelPatcherDynamic)"
    return "classic ModelPatcher (Dynamic VRAM available but off)"


def memory_path_line() -> str:
    """Said with every plan: which memory path ComfyUI runs, and that this model is streamed by DisTorch."""
    return f"ComfyUI memory path: {memory_path()}; this model: streamed by DisTorch (its own ModelPatcher subclass)"


def free_vram(device: torch.device) -> int:
    """Bytes ComfyUI itself counts as free on ``device`` (the driver's free memory plus torch's cached blocks)."""
    model_management = importlib.import_module("comfy.model_management")
    return int(model_management.get_free_memory(device))


def batching_asks_the_patcher() -> bool:
    """Whether ComfyUI's calc_cond_batch asks the sampled model's patcher how much memory is free before it
    batches cond and uncond (``ModelPatcher.get_free_memory``, ComfyUI 0.33), rather than the memory manager
    (0.3.75): only then can a patcher's answer (StreamingModelPatcher.get_free_memory) inform that decision."""
    patcher = importlib.import_module("comfy.model_patcher").ModelPatcher
    return callable(getattr(patcher, "get_free_memory", None))


def free_memory_for_batching(patcher: Any, device: torch.device) -> int:
    """ComfyUI's own answer for ``patcher``: ModelPatcher.get_free_memory where it exists (with Dynamic VRAM it adds
    what other models' weights could give back), else the memory manager's free memory."""
    own = getattr(importlib.import_module("comfy.model_patcher").ModelPatcher, "get_free_memory", None)
    return int(own(patcher, device)) if callable(own) else free_vram(device)


def reserved_vram() -> int:
    """The VRAM ComfyUI keeps reserved on top of everything (``--reserve-vram``; 400 MB on Linux by default)."""
    model_management = importlib.import_module("comfy.model_management")
    return int(model_management.extra_reserved_memory())


def _guider_conds(executor: Any) -> tuple[Any, Any]:
    """The CFG guider an OUTER_SAMPLE wrapper's executor runs, and its conds (processed or as given)."""
    guider = getattr(executor, "class_obj", None)
    return guider, getattr(guider, "conds", None) or getattr(guider, "original_conds", None)


def forward_shape(executor: Any, noise: Any) -> tuple[list[int], int] | None:
    """``(shape of one diffusion forward's input, how many cond entries share it)`` for the sampling run an
    OUTER_SAMPLE wrapper is about to execute: ComfyUI's calc_cond_batch runs cond and uncond as one batch when
    memory allows. None when the sampler is not a CFG guider we can read (then the caller assumes a batch of 2)."""
    guider, conds = _guider_conds(executor)
    shape = list(getattr(noise, "shape", ()))
    if not isinstance(conds, dict) or not shape:
        return None
    cfg = float(getattr(guider, "cfg", 1.0))
    options = getattr(guider, "model_options", {}) or {}
    uses_uncond = not (abs(cfg - 1.0) < 1e-9 and not options.get("disable_cfg1_optimization", False))
    entries = len(conds.get("positive") or ()) + (len(conds.get("negative") or ()) if uses_uncond else 0)
    return shape, max(entries, 1)


# Cond classes whose one tensor ComfyUI only slices, repeats and concatenates per step (comfy.conds), so it may
# live on the compute device for the whole run; subclasses (a custom node's) are left alone.
STAGED_COND_CLASSES = ("CONDRegular", "CONDNoiseShape", "CONDCrossAttn")
STAGED_CONDS_MAX_BYTES = 64 * 2**20  # the conds of a text-to-image run take a few MB; a video's image conds stay


def stage_conds_on_device(guider: Any, device: torch.device, max_bytes: int = STAGED_CONDS_MAX_BYTES) -> int:
    """Move a sampling run's processed conds (``guider.conds[...][i]["model_conds"]``) from the CPU to ``device``
    once, before its first step; returns the bytes moved (0 when none or more than ``max_bytes`` would move).

    Why: ComfyUI keeps them on the CPU and copies them to the device inside every forward, a pageable copy on the
    compute stream. While a streamed block's copy is in flight that small copy waits in the copy engine's queue
    behind it (the H200's profile: 11-17 ms per step). Copies go in new cond objects of the run's own dicts
    (encode_model_conds made them), so the user's conditioning and ComfyUI's caches keep their CPU tensors."""
    conds = getattr(guider, "conds", None)
    if device.type == "cpu" or not isinstance(conds, dict):
        return 0
    conds_module = importlib.import_module("comfy.conds")
    classes = tuple(c for c in (getattr(conds_module, n, None) for n in STAGED_COND_CLASSES) if isinstance(c, type))
    movable = [(model_conds, key, cond) for entries in conds.values() for entry in (entries or ())
               if isinstance(entry, dict) and isinstance(model_conds := entry.get("model_conds"), dict)
               for key, cond in model_conds.items()
               if type(cond) in classes and isinstance(cond.cond, torch.Tensor) and cond.cond.device.type == "cpu"]
    total = sum(cond.cond.numel() * cond.cond.element_size() for _, _, cond in movable)
    if total == 0 or total > max_bytes:
        return 0
    for model_conds, key, cond in movable:
        model_conds[key] = cond._copy_with(cond.cond.to(device))
    return total


EXTRA_MODEL_KEYS = ("control", "gligen", "additional_models")  # cond entries ComfyUI loads models from


def run_brings_models(executor: Any) -> bool:
    """Whether the sampling run an OUTER_SAMPLE wrapper is about to execute brings models of its own in its conds
    (ControlNets, GLIGEN...: comfy.sampler_helpers.get_additional_models). ComfyUI loads them beside the model,
    and a forward measured without them says nothing about the memory a run with them needs."""
    _, conds = _guider_conds(executor)
    if not isinstance(conds, dict):
        return False
    return any(isinstance(entry, dict) and entry.get(key) is not None
               for entries in conds.values() for entry in (entries or ()) for key in EXTRA_MODEL_KEYS)


def activation_bytes(model: Any, shape: list[int]) -> int | None:
    """ComfyUI's own estimate of a forward's activation memory for an input of ``shape``; None if the model has
    no estimate."""
    memory_required = getattr(model, "memory_required", None)
    return None if memory_required is None else int(memory_required(shape))


def is_dynamic_patcher(patcher: Any) -> bool:
    """True for newer ComfyUI's ModelPatcherDynamic (Dynamic VRAM), which manages weight residency itself."""
    try:
        dynamic = importlib.import_module("comfy.model_patcher").ModelPatcherDynamic
    except (ImportError, AttributeError):
        return False
    return isinstance(patcher, dynamic)


def _unload_if_loaded(patcher: Any) -> None:
    """Drop ``patcher`` from ComfyUI's loaded-model list: an entry there keeps its old device forever."""
    model_management = importlib.import_module("comfy.model_management")
    loaded = getattr(model_management, "current_loaded_models", None)
    if loaded is None:
        return
    for index in reversed(range(len(loaded))):
        if loaded[index].model is patcher:
            loaded.pop(index).model_unload()


def _stray_device(module: Any, device: torch.device) -> torch.device | None:
    """A non-CPU device other than ``device`` that holds some of the module's weights, if any."""
    tensors = list(module.parameters()) + list(module.buffers()) if hasattr(module, "parameters") else []
    for tensor in tensors:
        if tensor.device.type != "cpu" and tensor.device != device:
            return tensor.device
    return None


def retarget_patcher(patcher: Any, device: torch.device) -> Any:
    """Make ``patcher`` load onto ``device`` (on ``cpu`` it also offloads to ``cpu``); returns the patcher to use,
    which is a new one when a Dynamic VRAM patcher must become a classic one (Dynamic VRAM has no CPU path: as
    ComfyUI's own Select*Device nodes do, ``clone(disable_dynamic=True)``)."""
    if is_dynamic_patcher(patcher) and device.type == "cpu":
        try:
            patcher = patcher.clone(disable_dynamic=True)
        except RuntimeError as error:  # a loader that did not record how to rebuild its model
            log.warning("distorch: %s stays a Dynamic VRAM patcher on cpu: %s", type(patcher.model).__name__, error)
    _unload_if_loaded(patcher)
    patcher.load_device = device
    if device.type == "cpu":
        patcher.offload_device = _CPU
    if hasattr(patcher, "register_load_device"):  # Dynamic VRAM keeps per-device pin state
        patcher.register_load_device(device)
    stray = _stray_device(patcher.model, device)
    if stray is not None:
        # The core loader put the weights on the default GPU; free it, load_models_gpu brings them back.
        log.info("distorch: moving %s off %s to %s", type(patcher.model).__name__, stray, patcher.offload_device)
        patcher.model.to(patcher.offload_device)
        patcher.model.device = patcher.offload_device
    return patcher


def model_kind(obj: Any) -> str:
    """Which kind of loaded object ``obj`` is, by duck typing: model, clip, vae, clip_vision, control_net."""
    if hasattr(obj, "load_device") and hasattr(obj, "offload_device") and hasattr(obj, "model_size"):
        return "model"
    if hasattr(obj, "cond_stage_model") and hasattr(obj, "patcher"):
        return "clip"
    if hasattr(obj, "first_stage_model") and hasattr(obj, "patcher"):
        return "vae"
    if hasattr(obj, "encode_image") and hasattr(obj, "patcher"):
        return "clip_vision"
    if hasattr(obj, "get_control") and hasattr(obj, "set_cond_hint"):
        return "control_net"
    return "unknown"


def place_on_device(obj: Any, device: torch.device) -> tuple[str, Any]:
    """Retarget a loaded object to ``device``: ``(its kind, the object to use)``, which is ``obj`` itself except
    for a bare ModelPatcher that had to be replaced (see :func:`retarget_patcher`). Unknown objects raise
    TypeError."""
    kind = model_kind(obj)
    if kind == "model":
        obj = retarget_patcher(obj, device)
    elif kind == "clip":
        obj.patcher = retarget_patcher(obj.patcher, device)
        obj.cond_stage_model = obj.patcher.model  # the same module unless the patcher had to be rebuilt
    elif kind == "vae":
        obj.device = device  # VAE.decode/encode move latents to vae.device themselves
        obj.patcher = retarget_patcher(obj.patcher, device)
        obj.first_stage_model = obj.patcher.model
        _use_vae_dtype_of(obj, device)
        # obj.output_device stays ComfyUI's intermediate device: it is where the rest of the graph expects images.
    elif kind == "clip_vision":
        obj.load_device = device  # encode_image moves pixels to clip_vision.load_device
        obj.patcher = retarget_patcher(obj.patcher, device)
        obj.model = obj.patcher.model
    elif kind == "control_net":
        _place_control_net(obj, device)
    else:
        raise TypeError(f"cannot place a {type(obj).__name__} on a device: not a model ComfyUI loads")
    return kind, obj


def _use_vae_dtype_of(vae: Any, device: torch.device) -> None:
    """Give a VAE the dtype ComfyUI gives one built for ``device`` (VAE.__init__: ``vae_dtype(device, working
    dtypes)``; fp32 on a CPU), and cast a classic patcher's weights to it as VAE.__init__ does (Dynamic VRAM casts
    them at each op). The loader built it for the default GPU: on 0.33 a VAE moved to the CPU kept file-dtype
    weights and was fed bf16 latents ("Input type BFloat16 and bias type float")."""
    choose = getattr(importlib.import_module("comfy.model_management"), "vae_dtype", None)
    working = getattr(vae, "working_dtypes", None)
    if choose is None or not working or device.type == "meta":
        return  # meta computes nothing; ComfyUI's rules would ask the CUDA driver about it (and fail on a GPU)
    vae.vae_dtype = choose(device, working)
    if not is_dynamic_patcher(vae.patcher):
        vae.first_stage_model.to(vae.vae_dtype)


def _place_control_net(control: Any, device: torch.device) -> None:
    if hasattr(control, "load_device"):
        control.load_device = device
    if getattr(control, "control_model_wrapped", None) is not None:
        control.control_model_wrapped = retarget_patcher(control.control_model_wrapped, device)
    if hasattr(control, "t2i_model"):  # T2IAdapter keeps a plain device attribute
        control.device = device


def device_of(obj: Any) -> dict[str, str]:
    """Where ``obj`` will compute and where its weights are now, as strings (for logs and probes)."""
    kind = model_kind(obj)
    patcher = {"model": obj, "control_net": getattr(obj, "control_model_wrapped", None)}.get(kind, None)
    if patcher is None:
        patcher = getattr(obj, "patcher", None)
    if patcher is None:
        return {"kind": kind, "load_device": str(getattr(obj, "load_device", getattr(obj, "device", "?")))}
    weights = next(iter(patcher.model.parameters()), None) if hasattr(patcher.model, "parameters") else None
    return {"kind": kind, "load_device": str(patcher.load_device), "offload_device": str(patcher.offload_device),
            "weights_device": str(weights.device) if weights is not None else "none"}


# --- the dtype ComfyUI loads a model file in (for the plan preview) ------------------------------------------
# The core loaders decide it before DisTorch retargets anything, for ComfyUI's own default device, so these
# functions ask ComfyUI the same questions with the same (default) device. Model files are described by their
# header entries (distorch.safetensors_header): ComfyUI's detection reads keys, shapes and dtypes only, so meta
# tensors stand in for the weights.
_QUANT_CONFIG_ATTRS = ("scaled_fp8", "layer_quant_config", "quant_config")  # 0.3.75 has the first two, 0.33 the last


def meta_state_dict(entries: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Header entries as meta tensors of the same shapes and dtypes (no memory, no file data)."""
    return {key: torch.empty(entry["shape"], dtype=TORCH_DTYPES[entry["dtype"]], device="meta")
            for key, entry in entries.items() if entry.get("dtype") in TORCH_DTYPES}


def forced_weight_dtype(option: str | None) -> torch.dtype | None:
    """The dtype UNETLoader's ``weight_dtype`` input forces (``fp8_e4m3fn_fast`` -> float8_e4m3fn), or None for
    ``default``. Read from the option's name, as the core node maps it, so a new ``fpN_...`` option works too."""
    if not option or option == "default":
        return None
    name = option.removesuffix("_fast")
    dtype = getattr(torch, "float" + name[2:], None) if name.startswith("fp") else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown weight_dtype {option!r}: expected default or an fp8 option of UNETLoader")
    return dtype


def diffusion_model_load_dtype(entries: dict[str, dict[str, Any]], metadata: dict[str, str] | None = None,
                               weight_dtype: str | None = "default") -> torch.dtype | None:
    """The dtype ComfyUI's UNETLoader / CheckpointLoaderSimple store this file's diffusion-model weights in.

    The loaders' own steps: model type from the keys (``model_detection``), then ``weight_dtype`` if forced,
    else ``unet_dtype`` with the model's supported dtypes, parameter count and stored dtype. None where the
    weights keep the file's own dtypes (quantized files: scaled fp8, per-layer quantization) or ComfyUI cannot
    tell the model type from the header.
    """
    model_detection = importlib.import_module("comfy.model_detection")
    model_management = importlib.import_module("comfy.model_management")
    utils = importlib.import_module("comfy.utils")
    state_dict = meta_state_dict(entries)
    prefix = model_detection.unet_prefix_from_state_dict(state_dict)
    if not any(key.startswith(prefix) for key in state_dict):
        prefix = ""  # a diffusion_models file: the loader strips a prefix only when keys have it
    parameters, stored = utils.calculate_parameters(state_dict, prefix), utils.weight_dtype(state_dict, prefix)
    if _quantized(state_dict, prefix, metadata):
        return None
    config = _model_config(model_detection, state_dict, prefix, metadata)
    if config is None or any(getattr(config, attr, None) for attr in _QUANT_CONFIG_ATTRS):
        return None
    forced = forced_weight_dtype(weight_dtype)
    if forced is not None:
        return forced
    supported = list(config.supported_inference_dtypes)
    return model_management.unet_dtype(model_params=parameters, supported_dtypes=supported, weight_dtype=stored)


def _quantized(state_dict: dict[str, torch.Tensor], prefix: str, metadata: dict[str, str] | None) -> bool:
    """Quantized weights that ComfyUI's ops keep in the file's dtypes: scaled fp8 (both versions), per-layer
    quantization metadata (0.3.75) or ``.comfy_quant`` entries (0.33)."""
    return (f"{prefix}scaled_fp8" in state_dict or "_quantization_metadata" in (metadata or {})
            or any(key.endswith(".comfy_quant") for key in state_dict))


def _model_config(model_detection: Any, state_dict: dict, prefix: str, metadata: dict[str, str] | None) -> Any:
    detect = model_detection.model_config_from_unet
    try:
        if "metadata" in inspect.signature(detect).parameters:
            return detect(state_dict, prefix, metadata=dict(metadata or {}))  # a copy: detection pops from it
        return detect(state_dict, prefix)
    except Exception as error:  # detection code that reads tensor values cannot run on meta tensors
        log.info("distorch: ComfyUI's model detection cannot read this header (%s); previewing stored dtypes",
                 error)
        return None


def text_encoder_load_dtype(entries: dict[str, dict[str, Any]]) -> torch.dtype:
    """The dtype ComfyUI's CLIP loaders store a text-encoder file's weights in: ``text_encoder_dtype`` for its
    text-encoder device, or the file's own dtype where that is smaller (``pick_weight_dtype``, how T5 and LLM
    encoders keep an fp8 file; a CLIP-L file in fp8 is upcast by ComfyUI, which this does not model)."""
    model_management = importlib.import_module("comfy.model_management")
    utils = importlib.import_module("comfy.utils")
    device = model_management.text_encoder_device()
    fallback = model_management.text_encoder_dtype(device)
    pick = getattr(model_management, "pick_weight_dtype", None)
    stored = utils.weight_dtype(meta_state_dict(entries))
    return pick(stored, fallback, device) if pick is not None else fallback


# --- GGUF files and ComfyUI's state-dict loaders (nodes/gguf_loaders.py) ------------------------------------
GGUF_EXTENSIONS = frozenset({".gguf"})


def _gguf_folder(kind: str) -> str | None:
    """The folder_paths key under which ``kind``'s folders (e.g. ``diffusion_models``: models/unet and
    models/diffusion_models, plus extra_model_paths) are listed with the ``.gguf`` extension only; registered on
    first use, sharing ``kind``'s live list of folders, so ComfyUI's cached listing works and no other node's
    list changes. None when this ComfyUI keeps its folders in another form (then :func:`gguf_files` walks them)."""
    import folder_paths

    registry = getattr(folder_paths, "folder_names_and_paths", None)
    entry = registry.get(kind) if isinstance(registry, dict) else None
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], list)):
        return None
    key = f"distorch_gguf_{kind}"
    current = registry.get(key)
    if current is None or current[0] is not entry[0]:
        registry[key] = (entry[0], set(GGUF_EXTENSIONS))
    return key


def gguf_files(kind: str) -> list[str]:
    """Names (relative to their folder) of the ``.gguf`` files in ComfyUI's folders for ``kind``."""
    import folder_paths

    key = _gguf_folder(kind)
    if key is not None:
        return folder_paths.get_filename_list(key)
    names = set()
    for root in folder_paths.get_folder_paths(kind):
        for folder, _, files in os.walk(root, followlinks=True):
            names.update(os.path.relpath(os.path.join(folder, f), root) for f in files
                         if os.path.splitext(f)[1].lower() in GGUF_EXTENSIONS)
    return sorted(names)


def model_files(kind: str) -> list[str]:
    """The files ComfyUI's own loaders list for ``kind`` (safetensors...), without ``.gguf`` ones."""
    import folder_paths

    return folder_paths.get_filename_list(kind)


def model_path(kind: str, name: str) -> str:
    """The full path of a file listed by :func:`gguf_files` or :func:`model_files` (only listed names are
    accepted, so ``../`` or an absolute path resolves to nothing)."""
    import folder_paths

    if os.path.splitext(name)[1].lower() in GGUF_EXTENSIONS:
        key = _gguf_folder(kind)
        if name not in gguf_files(kind):
            path = None
        elif key is not None:
            path = folder_paths.get_full_path(key, name)
        else:
            path = next((p for p in (os.path.join(r, name) for r in folder_paths.get_folder_paths(kind))
                         if os.path.isfile(p)), None)
    else:
        path = folder_paths.get_full_path(kind, name) if name in model_files(kind) else None
    if path is None:
        raise FileNotFoundError(f"no model file {name!r} in ComfyUI's {kind} folders")
    return path


def load_torch_file(path: str) -> dict:
    """A safetensors/ckpt file's state dict, read as ComfyUI's loaders read it."""
    import comfy.utils

    return comfy.utils.load_torch_file(path, safe_load=True)


def _classic_patcher_option(function: Any) -> dict[str, bool]:
    """``disable_dynamic=True`` where the loader has it (newer ComfyUI): the streaming patcher replaces the
    ModelPatcher anyway, and with the classic one the model loads its weights the classic way."""
    return {"disable_dynamic": True} if "disable_dynamic" in inspect.signature(function).parameters else {}


def load_diffusion_state_dict(state_dict: dict, operations: type) -> Any:
    """ComfyUI's diffusion-model loader on a state dict built with ``operations``; None if ComfyUI does not
    recognise the model."""
    import comfy.sd

    loader = comfy.sd.load_diffusion_model_state_dict
    return loader(state_dict, model_options={"custom_operations": operations}, **_classic_patcher_option(loader))


def load_text_encoders(state_dicts: list[dict], clip_type: str, operations: type) -> Any:
    """ComfyUI's text-encoder loader (what CLIPLoader/DualCLIPLoader call) on state dicts, built with
    ``operations`` on the text encoders' offload device; ``clip_type`` is the core loaders' ``type`` value."""
    import comfy.model_management
    import comfy.sd
    import folder_paths

    kind = getattr(comfy.sd.CLIPType, clip_type.upper(), comfy.sd.CLIPType.STABLE_DIFFUSION)
    loader = comfy.sd.load_text_encoder_state_dicts
    options = {"custom_operations": operations,
               "initial_device": comfy.model_management.text_encoder_offload_device()}
    return loader(state_dicts=state_dicts, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                  clip_type=kind, model_options=options, **_classic_patcher_option(loader))


def on_detach(patcher: Any, key: str, callback: Any) -> None:
    """Run ``callback(patcher, unpatch_all)`` whenever ComfyUI detaches (unloads) the model."""
    import comfy.patcher_extension

    patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, key, callback)


def compute_dtype(model: Any) -> torch.dtype:
    """The dtype a diffusion model computes in (ComfyUI's manual-cast dtype, else its weight dtype); float32 for
    models without ``get_dtype`` (text encoders, whose activations ComfyUI keeps in float32)."""
    manual = getattr(model, "manual_cast_dtype", None)
    if manual is not None:
        return manual
    get_dtype = getattr(model, "get_dtype", None)
    return get_dtype() if callable(get_dtype) else torch.float32
