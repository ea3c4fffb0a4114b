"""The automatic budget (virtual_vram_gb "auto", the default) inside a real ComfyUI, in process.

On CPU the compute device is ComfyUI's CPU, whose "free memory" is the system's; the tests replace the one
function the patcher asks for free VRAM (nodes.comfy_adapter.free_vram) to play a smaller card, and check
that each sampling run plans from what is free then, keeps the activations of THAT run free, re-plans when free
memory changed without repacking what was packed, and always gives the resident result bit for bit.
"""
from __future__ import annotations

import sys

import pytest
import torch

CKPT = "distorch-tiny-sd15.safetensors"


def _node(comfy_nodes, node_id: str, **inputs):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


@pytest.fixture(scope="module")
def adapter(comfy_nodes):
    package = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchCheckpointLoader"].__module__.rpartition(".")[0]
    return sys.modules[package + ".comfy_adapter"]


@pytest.fixture(scope="module")
def auto_budget(adapter):
    return sys.modules[adapter.__name__.rpartition(".")[0] + ".auto_budget"]


@pytest.fixture(scope="module")
def sd(comfy_nodes):
    model, clip, _ = _node(comfy_nodes, "CheckpointLoaderSimple", ckpt_name=CKPT)
    (pos,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="a cat")
    (neg,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="")
    return model, pos, neg


def _sample(comfy_nodes, model, pos, neg, cfg: float) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = comfy_nodes.common_ksampler(model, 42, 2, cfg, "euler", "simple", pos, neg, latent)
    return out["samples"]


@pytest.fixture
def card(adapter, monkeypatch):
    """A card with ``card.free`` bytes for the model under test: what the driver reports is that minus what the
    model itself holds while loaded (set ``card.model``)."""
    class Card:
        free = 10**12
        model = None

        @classmethod
        def driver_free(cls, device) -> int:
            state = cls.model.distorch if cls.model is not None else None
            held = state.plan.device_footprint_bytes if state is not None and state.engine.is_loaded else 0
            return cls.free - held

    monkeypatch.setattr(adapter, "free_vram", Card.driver_free)
    return Card


def _auto_model(comfy_nodes):
    import comfy.model_management

    device = str(comfy.model_management.get_torch_device())
    model, _, _ = _node(comfy_nodes, "DisTorchCheckpointLoader", ckpt_name=CKPT, compute_device=device,
                        virtual_vram_gb="auto", donor_device="cpu", expert_allocation="")
    return model


def test_auto_is_the_default_and_plans_from_free_memory_at_each_sampling_run(comfy_nodes, sd, card):
    import comfy.model_management as mm

    base, pos, neg = sd
    resident = _sample(comfy_nodes, base, pos, neg, cfg=3.0)
    spec = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchCheckpointLoader"].INPUT_TYPES()["required"]["virtual_vram_gb"]
    assert spec[1]["default"] == "auto"
    model = card.model = _auto_model(comfy_nodes)
    state = model.distorch
    assert model.model_size() == state.auto.model_bytes  # ComfyUI makes room as for the whole model

    card.free = 10**12  # everything fits
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), resident)
    assert state.plan.streamed == ()
    roomy = state.auto.reserve_bytes + 2 * state.auto.model_bytes  # this run's reserve is known now

    card.free = state.auto.other_bytes + state.auto.reserve_bytes + state.auto.model_bytes // 3  # a small card
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), resident)
    assert state.plan.streamed and not state.plan.budget_raised
    assert state.plan.device_footprint_bytes + state.plan.activation_reserve_bytes <= card.free
    assert state.plan.paced  # the first run timed every block: streamed bytes now follow compute time
    packed = {name: state.engine._arenas[torch.device("cpu")].segment(name).data_ptr()
              for name in state.plan.streamed_names}

    card.free = roomy  # the card is free again: everything resident, nothing repacked
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), resident)
    assert state.plan.streamed == ()
    card.free = state.auto.other_bytes + state.auto.reserve_bytes + state.auto.model_bytes // 3
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), resident)
    assert {n: state.engine._arenas[torch.device("cpu")].segment(n).data_ptr()
            for n in state.plan.streamed_names} == packed
    mm.unload_all_models()


def test_the_reserve_is_sized_for_the_run_about_to_sample(comfy_nodes, sd, card):
    import comfy.model_management as mm

    _, pos, neg = sd
    model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    batched = auto.reserve_bytes
    assert "2 cond(s) of a 1x4x8x8 latent" in auto.reserve_reason
    _sample(comfy_nodes, model, pos, neg, cfg=1.0)  # cfg 1: ComfyUI skips the uncond
    assert "1 cond(s)" in auto.reserve_reason and 0 < auto.reserve_bytes <= batched
    mm.unload_all_models()


def test_a_measured_activation_peak_sizes_the_reserve_of_single_cond_runs_only(comfy_nodes, sd, card, auto_budget):
    """On CUDA the engine measures a forward's activation peak (distorch.activation_peak); here, on CPU, the value
    it would report is handed to the budget as the patcher hands it after a sampling run."""
    import comfy.model_management as mm

    base, pos, neg = sd
    model = card.model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    batched = auto.reserve_bytes
    _sample(comfy_nodes, model, pos, neg, cfg=1.0)
    estimated = auto.reserve_bytes
    card.free = auto.other_bytes + estimated + auto.model_bytes // 3  # a card on which the reserve matters
    _sample(comfy_nodes, model, pos, neg, cfg=1.0)
    streamed_with_estimate = model.distorch.plan.streamed_bytes
    auto.note_activation_peak(3 * 2**20)  # what a forward of this run's shape allocated at its peak
    auto.note_activation_peak(2 * 2**20)  # a later, lower measurement does not lower it
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=1.0), _sample(comfy_nodes, base, pos, neg, cfg=1.0))
    assert auto.reserve_bytes == auto_budget.measured_reserve(3 * 2**20) < estimated
    assert "measured peak" in auto.reserve_reason
    plan = model.distorch.plan  # the VRAM no longer kept free holds weights
    assert plan.activation_reserve_bytes == auto.reserve_bytes and plan.streamed_bytes < streamed_with_estimate
    _sample(comfy_nodes, model, pos, neg, cfg=3.0)  # cond and uncond may batch, and no such forward was measured
    assert auto.reserve_bytes == batched and "measured" not in auto.reserve_reason
    mm.unload_all_models()


def test_a_forward_measured_with_a_larger_batch_bounds_the_reserve_of_a_smaller_one(auto_budget):
    """Activations grow with the batch: a cfg 1 run of a latent whose cfg 3.5 forward (cond + uncond) was measured
    keeps that measurement, not ComfyUI's estimate; never one of another latent size or a smaller batch."""
    flux = (1, 16, 128, 128)
    peaks = {(flux, 2): 900, ((1, 16, 64, 64), 1): 100, ((2, 16, 128, 128), 2): 2000}
    assert auto_budget.bounding_peak(peaks, (flux, 2)) == (900, "")  # its own measurement
    assert auto_budget.bounding_peak(peaks, (flux, 1)) == (900, " (of a batch of 2: at most that)")
    assert auto_budget.bounding_peak(peaks, ((2, 16, 128, 128), 1))[0] == 900  # two latents, one cond: a batch of 2
    assert auto_budget.bounding_peak(peaks, (flux, 3))[0] == 2000  # only the batch of 4 holds 3
    assert auto_budget.bounding_peak(peaks, ((1, 16, 96, 96), 1)) == (None, "")  # another latent size
    assert auto_budget.bounding_peak(peaks, ((4, 16, 128, 128), 2)) == (None, "")  # larger than anything measured


def test_a_measured_batched_forward_sizes_the_reserve_where_comfyui_asks_the_patcher(
        comfy_nodes, sd, card, adapter, auto_budget, monkeypatch):
    """ComfyUI batches cond and uncond when its estimate x1.5 is below the free memory. Where it asks the model's
    patcher (0.33), the patcher answers with what the estimate overstates a measured batched forward by, so a
    reserve sized from the measurement still gets one batched forward per step; where it asks the memory manager
    (0.3.75), the estimate keeps ruling the reserve."""
    import comfy.model_management as mm

    base, pos, neg = sd
    model = card.model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    one_batch = _sample(comfy_nodes, base, pos, neg, cfg=3.0)
    _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    batched = auto.reserve_bytes
    need = adapter.activation_bytes(model.model, [2, 4, 8, 8])
    # Free memory as ComfyUI sees it: just too little for its estimate x1.5, plenty for the measured peak.
    real_free_memory = mm.get_free_memory

    def free_memory(dev=None, torch_free_too=False):  # attention's chunking (torch_free_too) sees the real value
        return real_free_memory(dev, True) if torch_free_too else int(need * 1.5) - 1
    monkeypatch.setattr(mm, "get_free_memory", free_memory)
    split = _sample(comfy_nodes, base, pos, neg, cfg=3.0)  # a core patcher: its batch is split now
    batches = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), split)
        assert batches == [1, 1, 1, 1]  # nothing measured: ComfyUI splits cond and uncond
        auto.note_activation_peak(need // 4, batch=1)  # a split forward's peak says nothing about a batch of 2
        assert (((1, 4, 8, 8), 2)) not in auto.measured_peaks
        auto.note_activation_peak(need // 4, batch=2)
        batches.clear()
        latents = _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    finally:
        hook.remove()
    if adapter.batching_asks_the_patcher():
        assert auto.reserve_bytes == auto_budget.measured_reserve(need // 4) < batched
        assert auto.batch_credit_bytes == int(need * 1.5) - int(need // 4 * 1.1)
        assert batches == [2, 2] and torch.equal(latents, one_batch)  # one batched forward per step
    else:
        assert auto.reserve_bytes == batched and auto.batch_credit_bytes == 0
        assert batches == [1, 1, 1, 1] and torch.equal(latents, split)
    mm.unload_all_models()


def test_a_card_smaller_than_the_minimum_still_runs_exactly(comfy_nodes, sd, card):
    import comfy.model_management as mm

    base, pos, neg = sd
    model = card.model = _auto_model(comfy_nodes)
    card.free = 1
    assert torch.equal(_sample(comfy_nodes, model, pos, neg, cfg=3.0), _sample(comfy_nodes, base, pos, neg, cfg=3.0))
    assert model.distorch.plan.budget_raised
    mm.unload_all_models()


def test_a_replan_is_priced_with_the_first_full_load_s_measured_rates(comfy_nodes, sd, card, adapter):
    import types

    import comfy.model_management as mm

    _, pos, neg = sd
    model = card.model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    assert auto.run_steps == 2 and auto.block_seconds is not None  # from the run's sigmas and its measured forward
    auto.move_rates = None
    auto.note_load(types.SimpleNamespace(pack_s=1.0, packed_bytes=10**9, pin_s=0.5, pinned_bytes=2 * 10**9,
                                         resident_s=0.2, resident_bytes=4 * 10**9))
    costs = auto.replan_costs()
    assert costs.stream_s_per_byte == 1.0 / 10**9 + 0.5 / (2 * 10**9)  # packing the new bytes, pinning them all
    assert costs.upload_s_per_byte == 0.2 / (4 * 10**9)
    assert costs.forwards == 2 and costs.forward_compute_s == sum(auto.block_seconds)
    auto.note_load(types.SimpleNamespace(pack_s=9.0, packed_bytes=1, pin_s=9.0, pinned_bytes=1, resident_s=9.0,
                                         resident_bytes=1))
    assert auto.replan_costs() == costs  # the first full load's rates are kept
    mm.unload_all_models()


def test_a_run_that_brings_a_controlnet_keeps_comfyui_s_estimate(comfy_nodes, sd, card, auto_budget):
    """A ControlNet (any model in the conds) loads beside the model and runs beside its forward: a peak measured
    without it neither sizes that run's reserve nor is recorded from it."""
    import types

    import comfy.model_management as mm

    _, pos, neg = sd
    model = card.model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    _sample(comfy_nodes, model, pos, neg, cfg=1.0)
    estimated = auto.reserve_bytes
    auto.note_activation_peak(3 * 2**20)
    noise = torch.zeros(1, 4, 8, 8)

    def run(conds):
        guider = types.SimpleNamespace(conds=conds, cfg=1.0, model_options={})
        auto_budget.note_sampling_run(auto, model.model, types.SimpleNamespace(class_obj=guider), noise)

    run({"positive": [{"model_conds": {}}], "negative": [{}]})
    assert auto.reserve_bytes == auto_budget.measured_reserve(3 * 2**20) and not auto.run_brings_models
    run({"positive": [{"model_conds": {}, "control": object()}], "negative": [{}]})
    assert auto.run_brings_models and auto.reserve_bytes == estimated
    auto.note_activation_peak(2**40)
    assert auto.measured_peaks[((1, 4, 8, 8), 1)] == 3 * 2**20  # nothing recorded from a run with a ControlNet
    mm.unload_all_models()


def test_the_first_prompt_keeps_cond_and_uncond_batched_after_the_sampler_s_own_tensors(
        comfy_nodes, sd, card, auto_budget, monkeypatch):
    """ComfyUI checks its estimate x1.5 against the free memory only after the sampler has put latents, conds and
    noise on the device. The plan must leave room for those too, or a plan that fills the reserve exactly splits
    cond and uncond (seen on the H200: Flux at 1024x1024, cfg 3.5, 16 GiB free, the model's first prompt)."""
    import comfy.model_management as mm

    base, pos, neg = sd
    one_batch = _sample(comfy_nodes, base, pos, neg, cfg=3.0)
    model = card.model = _auto_model(comfy_nodes)
    auto = model.distorch.auto
    # An estimate big enough that ComfyUI's x1.5 rule, not the reserved-VRAM floor, sizes the reserve (as for
    # Flux at 1024x1024: 2.1 GB for cond and uncond).
    need = 3 * 10**9
    monkeypatch.setattr(model.model, "memory_required", lambda shape, cond_shapes=None: need * shape[0] / 2)
    # A card that holds the estimate x1.5, the sampler's margin and a third of the model: the plan fills it to the
    # byte, and the sampler's own tensors must still leave ComfyUI's estimate x1.5 free.
    card.free = auto.other_bytes + int(need * 1.5) + auto_budget.SAMPLER_MARGIN + auto.model_bytes // 3
    real_free_memory = mm.get_free_memory
    sampler_tensors = 8 * 2**20

    def free_memory(dev=None, torch_free_too=False):  # the card, minus what the sampler put on it
        return real_free_memory(dev, True) if torch_free_too else card.driver_free(dev) - sampler_tensors
    monkeypatch.setattr(mm, "get_free_memory", free_memory)
    batches = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        latents = _sample(comfy_nodes, model, pos, neg, cfg=3.0)
    finally:
        hook.remove()
    plan = model.distorch.plan
    assert plan.streamed and not plan.budget_raised  # a small card: the plan fills it up to the reserve
    assert batches == [2, 2] and torch.equal(latents, one_batch)
    mm.unload_all_models()
