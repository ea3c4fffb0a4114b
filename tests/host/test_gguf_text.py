"""GGUF text encoders through DisTorch's CLIP loaders (GGUF), in a real ComfyUI (in process).

T5-base (ComfyUI's CLIPLoader type ``stable_audio``) runs for real. T5-XXL and the LLM encoders are too big for a
test file, so they are checked header-only: llama.cpp tensor names (from the gguf package's own converter map)
and ComfyUI's shapes, with raw bytes on the meta device, go through ComfyUI's real text-encoder loader.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from gguf import MODEL_ARCH, get_tensor_name_map

from gguf_helpers import TEXT, reference_weights, run_node
from gguf_helpers import unload_models_after_each_test  # noqa: F401  (an autouse fixture)

T5_BASE = "distorch-t5-base-Q4_K.gguf"
PROMPT = "a lighthouse at dusk"


def clip_gguf(comfy_nodes, device, virtual_vram_gb: float):
    (clip,) = run_node(comfy_nodes, "DisTorchCLIPLoaderGGUF", clip_name=T5_BASE, type="stable_audio",
                       compute_device=str(device), virtual_vram_gb=virtual_vram_gb, donor_device="cpu",
                       expert_allocation="")
    return clip


def encode(comfy_nodes, clip) -> torch.Tensor:
    ((cond, _),) = run_node(comfy_nodes, "CLIPTextEncode", clip=clip, text=PROMPT)[0]
    return cond


@pytest.fixture(scope="module")
def device(comfy_nodes) -> torch.device:
    import comfy.model_management

    return comfy.model_management.get_torch_device()


@pytest.fixture(scope="module")
def resident_t5(comfy_nodes, device) -> torch.Tensor:
    return encode(comfy_nodes, clip_gguf(comfy_nodes, device, 0.0))


def test_a_streamed_gguf_t5_gives_the_all_resident_conditioning_bitwise(comfy_nodes, device, resident_t5) -> None:
    clip = clip_gguf(comfy_nodes, device, 0.03)
    assert len(clip.patcher.distorch.plan.streamed) >= 3
    assert torch.equal(encode(comfy_nodes, clip), resident_t5) and torch.isfinite(resident_t5).all()
    assert clip.patcher.distorch.engine.misses == 0
    shared = clip.cond_stage_model.t5base.transformer.shared.weight
    assert shared.dtype == torch.uint8 and shared.quant_spec.qtype.name == "Q4_K"  # its rows dequantized per prompt


def _t5_keys(config: str) -> dict[str, torch.Size]:
    """ComfyUI's own T5 encoder (comfy/text_encoders/<config>.json): keys and shapes."""
    import comfy.ops
    import comfy.text_encoders.t5

    cfg = json.loads((Path(comfy.text_encoders.t5.__file__).parent / f"{config}.json").read_text())
    model = comfy.text_encoders.t5.T5(cfg, torch.float16, "meta", comfy.ops.manual_cast)
    return {k: v.shape for k, v in model.state_dict().items()}


def test_a_gguf_t5_computes_what_its_dequantized_weights_compute_through_comfyuis_loader(comfy_nodes,
                                                                                       resident_t5) -> None:
    import comfy.sd

    names = get_tensor_name_map(MODEL_ARCH.T5ENCODER, 12)  # the converter's map: ComfyUI key -> llama.cpp name
    to_key = {names.get_name(k, try_suffixes=(".weight",)): k for k in _t5_keys("t5_config_base")}
    reference = comfy.sd.load_text_encoder_state_dicts(
        [reference_weights(TEXT / T5_BASE, keys=to_key.get)], clip_type=comfy.sd.CLIPType.STABLE_AUDIO,
        model_options={"dtype": torch.float32})  # exact dequantized weights, as DisTorch dequantizes them
    assert torch.equal(encode(comfy_nodes, reference), resident_t5)


# --- header-only: T5-XXL and LLM encoders through ComfyUI's loader, raw bytes on the meta device -----------------
def header_only(comfy_keys: dict[str, torch.Size], arch: MODEL_ARCH, blocks: int, metadata: dict):
    """A GGUFFile as llama.cpp would write ComfyUI's model: gguf's names, Q4_K where rows are whole blocks."""
    from gguf import MODEL_ARCH_NAMES

    gguf_file = sys.modules[_package() + ".distorch.gguf_file"]
    types = sys.modules[_package() + ".distorch.quant.types"]
    names = get_tensor_name_map(arch, blocks)
    tensors = {}
    for key, shape in comfy_keys.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"gguf's converter has no name for {key}"
        qtype = types.Q4_K if len(shape) == 2 and shape[-1] % 256 == 0 else types.F16
        raw = torch.empty(types.raw_nbytes(tuple(shape), qtype), dtype=torch.uint8, device="meta")
        tensors[name] = gguf_file.GGUFTensor(name, qtype, tuple(shape), tuple(shape), raw)
    meta = {"general.architecture": MODEL_ARCH_NAMES[arch], **metadata}
    return gguf_file.GGUFFile(f"{MODEL_ARCH_NAMES[arch]}-header-only.gguf", tensors, meta)


def _package() -> str:
    return next(name for name in sys.modules if name.endswith(".nodes.gguf_loaders")).rsplit(".nodes.", 1)[0]


def load_header_only(files, clip_type: str, extra_state_dicts=()):
    """Our state-dict builder and operations, then ComfyUI's own loader, building the model on meta."""
    import comfy.sd

    pkg = _package()
    state = sys.modules[pkg + ".nodes.gguf_state_dict"]
    ops = sys.modules[pkg + ".nodes.gguf_ops"].gguf_operations(sys.modules[pkg + ".distorch.quant"].ScratchPool())
    loaded = [state.text_encoder_state_dict(f) for f in files]
    clip = comfy.sd.load_text_encoder_state_dicts(
        [*extra_state_dicts, *(g.state_dict for g in loaded)], clip_type=getattr(comfy.sd.CLIPType, clip_type),
        model_options={"custom_operations": ops, "initial_device": torch.device("meta")})
    return clip, loaded


def _quantized(model: torch.nn.Module) -> dict[str, tuple]:
    return {n: p.quant_spec.shape for n, p in model.named_parameters() if hasattr(p, "quant_spec")}


def test_t5_xxl_names_and_shapes_build_comfyuis_t5_xxl_with_every_weight_quantized(comfy_nodes) -> None:
    import comfy.sd

    keys = _t5_keys("t5_config_xxl")
    clip, (loaded,) = load_header_only([header_only(keys, MODEL_ARCH.T5ENCODER, 24, {})], "SD3")
    assert comfy.sd.detect_te_model(loaded.state_dict) == comfy.sd.TEModel.T5_XXL
    assert set(loaded.state_dict) == set(keys) and loaded.unused() == []
    quantized = _quantized(clip.cond_stage_model)
    assert len(quantized) == len(loaded.sources) == sum(1 for s in keys.values() if len(s) == 2 and s[-1] % 256 == 0)
    assert quantized["t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] == (10240, 4096)


@pytest.mark.filterwarnings("ignore:.*non-meta parameter in the checkpoint to a meta parameter")  # CLIP-L on meta
def test_a_dual_flux_encoder_takes_a_safetensors_clip_l_beside_a_gguf_t5_xxl(comfy_nodes, models) -> None:
    import comfy.utils

    clip_l = comfy.utils.load_torch_file(str(models["clip_l"]), safe_load=True)
    header = header_only(_t5_keys("t5_config_xxl"), MODEL_ARCH.T5ENCODER, 24, {})
    clip, (loaded,) = load_header_only([header], "FLUX", extra_state_dicts=[clip_l])
    assert type(clip.cond_stage_model).__name__.startswith("FluxClipModel") and loaded.unused() == []
    quantized = _quantized(clip.cond_stage_model)
    assert quantized and all(n.startswith("t5xxl.") for n in quantized)  # CLIP-L stays plain
    dual = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchDualCLIPLoaderGGUF"].INPUT_TYPES()["required"]
    assert "flux" in dual["type"][0] and {"distorch-clip-l.safetensors", T5_BASE} <= set(dual["clip_name1"][0])


def _llm_keys(class_name: str, config: dict) -> dict[str, torch.Size]:
    import comfy.ops
    import comfy.text_encoders.llama

    cls = getattr(comfy.text_encoders.llama, class_name)
    return {k: v.shape for k, v in cls(config, torch.float16, "meta", comfy.ops.manual_cast).state_dict().items()}


@pytest.mark.parametrize("class_name, config, arch, te_model, heads", [
    ("Qwen3_4B", {}, MODEL_ARCH.QWEN3, "QWEN3_4B", {}),
    # HiDream's Llama 3.1 8B: ComfyUI builds it with Llama 3's real vocabulary (comfy/text_encoders/hidream.py)
    ("Llama2", {"vocab_size": 128256}, MODEL_ARCH.LLAMA, "LLAMA3_8",
     {"llama.attention.head_count": 32, "llama.attention.head_count_kv": 8}),
], ids=["qwen3-4b", "llama3-8b"])
def test_llm_names_and_shapes_build_comfyuis_encoder_with_every_weight_quantized(comfy_nodes, class_name, config,
                                                                                arch, te_model, heads) -> None:
    import comfy.sd

    tokenizer = Path(comfy.sd.__file__).parent / "text_encoders" / "llama_tokenizer" / "tokenizer.json"
    if class_name == "Llama2" and not tokenizer.is_file():
        pytest.skip(f"this ComfyUI tree has no {tokenizer} (HiDream's tokenizer), which building the encoder needs")
    keys = _llm_keys(class_name, config)
    blocks = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("model.layers."))
    clip, (loaded,) = load_header_only([header_only(keys, arch, blocks, heads)], "STABLE_DIFFUSION")
    assert comfy.sd.detect_te_model(loaded.state_dict) == getattr(comfy.sd.TEModel, te_model)
    assert set(loaded.state_dict) == set(keys) and loaded.unused() == []
    assert len(_quantized(clip.cond_stage_model)) == len(loaded.sources) > 0


def test_text_encoders_whose_tokenizer_comfyui_reads_from_the_state_dict_are_refused_naming_the_tensor(
        comfy_nodes) -> None:
    keys = {"shared.weight": torch.Size([256384, 4096]), "encoder.final_layer_norm.weight": torch.Size([4096])}
    umt5 = header_only(keys, MODEL_ARCH.T5ENCODER, 1, {})
    with pytest.raises(ValueError, match=r"tensor 'token_embd.weight' of t5encoder-header-only.gguf: this is a "
                                         r"UMT5-XXL encoder \(its sentencepiece tokenizer\)"):
        load_header_only([umt5], "WAN")


def test_a_diffusion_gguf_given_to_the_clip_loader_is_refused_naming_the_file(comfy_nodes, device) -> None:
    with pytest.raises(ValueError, match=r"distorch-tiny-flux-Q4_K.gguf: its architecture 'flux' is a diffusion "
                                         r"model, not a text encoder"):
        loaders = sys.modules[_package() + ".nodes.gguf_loaders"]
        loaders.load_gguf_text_encoders([str(TEXT.parent / "diffusion_models" / "distorch-tiny-flux-Q4_K.gguf")],
                                        "stable_diffusion")
