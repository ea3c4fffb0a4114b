"""The synthetic models are accepted by the host ComfyUI's own loaders as the intended architectures."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from comfy_server import COMFY_ROOT, MODELS_DIR  # the host under test; models are shared with the demo

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not COMFY_ROOT.is_dir(), reason="run scripts/setup.sh first (no ComfyUI tree)")


def _load_synth():
    spec = importlib.util.spec_from_file_location("synth_models", REPO / "scripts" / "synth_models.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["synth_models"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def synth():
    mod = _load_synth()
    from synth.comfy_env import import_comfy

    import_comfy(COMFY_ROOT)
    return mod


@pytest.fixture(scope="session")
def models(synth) -> dict[str, Path]:
    return synth.ensure_models(MODELS_DIR, "tiny", comfy_root=COMFY_ROOT)


def _sd(path: Path) -> dict:
    import comfy.utils

    return comfy.utils.load_torch_file(str(path))


def test_flux_is_flux_dev(models):
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(models["flux_tiny"]))
    cfg = model.model.model_config
    assert type(cfg).__name__ == "Flux"  # guidance_in present: dev, not FluxSchnell
    assert cfg.unet_config["depth"] == 1 and cfg.unet_config["depth_single_blocks"] == 1
    assert cfg.unet_config["context_in_dim"] == 768  # CLIP-L alone can drive it


def test_sd15_checkpoint(models):
    import comfy.sd
    import comfy.taesd.taesd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(models["sd15_tiny"]), output_vae=True,
                                                                output_clip=True)
    assert type(model.model.model_config).__name__ == "SD15"
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert cond.shape[-1] == 768 and cond.isfinite().all()


def test_sd3_unet(models):
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(models["sd3_tiny"]))
    assert type(model.model.model_config).__name__ == "SD3"


def test_clip_l_as_stable_diffusion(models):
    import comfy.sd

    clip = comfy.sd.load_clip(ckpt_paths=[str(models["clip_l"])], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert cond.shape == (1, 77, 768) and pooled.shape == (1, 768) and cond.isfinite().all()


def test_flux_driven_by_clip_l(models):
    """A CLIP-L-only conditioning fits the tiny Flux (txt_in 768) and the random forward stays finite."""
    import comfy.sd
    import torch

    clip = comfy.sd.load_clip(ckpt_paths=[str(models["clip_l"])])
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    model = comfy.sd.load_diffusion_model(str(models["flux_tiny"]))
    out = model.model.apply_model(torch.randn(1, 16, 16, 16), torch.tensor([0.5]), c_crossattn=cond, y=pooled,
                                  guidance=torch.tensor([3.5]))
    assert out.shape == (1, 16, 16, 16) and out.isfinite().all()


@pytest.mark.parametrize("name,channels", [("taesd", 4), ("taef1", 16)])
def test_taesd_vae(models, name, channels):
    import comfy.sd
    import comfy.taesd.taesd

    vae = comfy.sd.VAE(sd=_sd(models[name]))  # what VAELoader does for a file in models/vae
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert vae.latent_channels == channels


def test_controlnet(models):
    import comfy.controlnet

    cn = comfy.controlnet.load_controlnet(str(models["controlnet_sd15_tiny"]))
    assert isinstance(cn, comfy.controlnet.ControlNet)


def test_clip_vision(models):
    import comfy.clip_vision

    cv = comfy.clip_vision.load(str(models["clip_vision"]))
    assert cv is not None and cv.image_size == 224


def test_flux_lora_patches(models):
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(models["flux_tiny"]))
    patched, _ = comfy.sd.load_lora_for_models(model, None, _sd(models["flux_tiny_lora"]), 1.0, 0.0)
    from synth.catalog import LORA_TARGETS

    assert len(patched.patches) == len(LORA_TARGETS)


def test_second_call_is_cached(synth, models):
    stamps = {p: p.stat().st_mtime_ns for p in models.values()}
    results = synth.generate_set(MODELS_DIR, "tiny", comfy_root=COMFY_ROOT)
    assert {r.status for r in results} == {"cached"}
    assert {p: p.stat().st_mtime_ns for p in models.values()} == stamps


@pytest.mark.parametrize("name,arch,params", [("flux1_dev_full", "Flux", 11.90e9), ("sdxl_full", "SDXL", 3.47e9)])
def test_full_set_shapes_on_meta(synth, name, arch, params):
    """The GPU machine's full-size models, checked without writing: key list, size and detection."""
    import comfy.model_detection
    from synth.catalog import FULL

    spec = next(s for s in FULL if s.name == name)
    sd = spec.build(spec)
    assert sum(t.numel() for t in sd.values()) == pytest.approx(params, rel=0.01)
    prefix = "model.diffusion_model." if spec.relpath.startswith("checkpoints/") else ""
    assert type(comfy.model_detection.model_config_from_unet(sd, prefix)).__name__ == arch


@pytest.mark.parametrize("name", ["flux_tiny", "sd15_tiny", "sd3_tiny", "clip_l", "taesd", "taef1",
                                  "controlnet_sd15_tiny", "clip_vision", "flux_tiny_lora"])
def test_this_host_builds_every_tiny_architecture_with_the_keys_and_shapes_on_disk(synth, models, name):
    """The synthesizer runs on every host, and the files it wrote (on whichever host came first) are the ones
    this host's own classes describe: the models directory can be shared by the hosts."""
    import json
    import struct

    from synth.catalog import TINY

    spec = next(s for s in TINY if s.name == name)
    built = {key: list(t.shape) for key, t in spec.build(spec).items()}
    with open(models[name], "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    on_disk = {key: entry["shape"] for key, entry in header.items() if key != "__metadata__"}
    assert built == on_disk
