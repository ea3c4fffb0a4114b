"""The one place where the DisTorch engine meets ComfyUI's ModelPatcher and memory manager.

`StreamingModelPatcher` is a ModelPatcher subclass (the extension point ComfyUI-GGUF uses too). It changes
how the model's weights reach the compute device and nothing else:

- ComfyUI's `load_models_gpu` is told the truth: `model_size()` / `loaded_size()` are the bytes the engine
  really keeps on the compute device (resident weights + staging ring), so other models are unloaded only as
  far as needed, and `free_memory`/eject really free what we hold.
- `load()` hands placement to the engine (resident modules on the GPU, streamed blocks in a pinned host
  arena, hooks for the copy pipeline), then applies weight patches (LoRA...) with ComfyUI's own
  `patch_weight_to_device`, computed on the compute device exactly as a resident load would, so results are
  bit-identical; streamed weights are written back into the arena once per patch change.
- A patch change on a loaded model (new LoRA strength) re-patches only the keys whose patch list changed.
- Quantized (GGUF) weights are never patched in place: their patch lists are attached to them and applied after
  dequantization in every forward (nodes/quantized_weights.py), so a patch change rewrites no bytes at all.
- `partially_unload` cannot give back part of the model (the plan is fixed at load); it frees nothing, and
  ComfyUI then unloads the model completely, which the engine does cleanly.
- With the automatic budget, `model_size()` is the whole model (so ComfyUI makes room as for any model), and
  each load for sampling re-plans from the VRAM really free then, minus what that run's activations need
  (nodes.auto_budget); a loaded model is re-planned in place: the arena is kept, only blocks that change
  role move.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils

from ..distorch.budget import plan_auto, worth_replanning
from ..distorch.engine import EngineOptions, StreamingEngine
from ..distorch.planner import PlacementPlan
from ..distorch.registry import REGISTRY
from . import comfy_adapter
from .auto_budget import AutoBudget, note_sampling_run
from .quantized_weights import attach_patches, detach_all_patches, detach_patches

log = logging.getLogger("distorch")

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])  # ComfyUI's backup record shape
WRAPPER_KEY = "distorch"


@dataclass
class StreamingState:
    """Shared by a patcher and all its clones: they share one nn.Module, hence one engine."""

    plan: PlacementPlan
    engine: StreamingEngine
    options: EngineOptions
    auto: AutoBudget | None = None  # the automatic budget; None for a fixed plan
    # key -> the patch list baked into the weights now; holding the list keeps ids of its objects stable.
    applied: dict[str, tuple] = field(default_factory=dict)


def _patch_signature(patches: list) -> tuple:
    return tuple(patches)


def _same_patches(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for pa, pb in zip(a, b):
        if len(pa) != len(pb) or pa[0] != pb[0] or pa[1] is not pb[1]:
            return False
        if any(x is not y and x != y for x, y in zip(pa[2:], pb[2:])):
            return False
    return True


class StreamingModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher whose model streams part of its weights through the DisTorch engine."""

    distorch: StreamingState

    @classmethod
    def wrap(cls, base: comfy.model_patcher.ModelPatcher, plan: PlacementPlan, options: EngineOptions,
             compute_device: torch.device, name: str | None = None,
             auto: AutoBudget | None = None) -> "StreamingModelPatcher":
        base.detach()
        patcher = cls(base.model, compute_device, torch.device("cpu"), weight_inplace_update=base.weight_inplace_update)
        patcher.patches = {k: v[:] for k, v in base.patches.items()}
        patcher.patches_uuid = base.patches_uuid
        patcher.object_patches = base.object_patches.copy()
        patcher.model_options = base.model_options
        # The engine's root is the patcher's whole model, so its tensor names are ComfyUI's patch keys and
        # non-block parts (model_sampling buffers...) move to the compute device as in a full load.
        if options.forward_root is None and isinstance(getattr(base.model, "diffusion_model", None), torch.nn.Module):
            options = dataclasses.replace(options, forward_root="diffusion_model")  # one call = one forward
        patcher._attach(StreamingState(plan, StreamingEngine(base.model, plan, options, name), options, auto))
        return patcher

    def _attach(self, state: StreamingState) -> None:
        """Use ``state``'s engine, with per-prompt telemetry reported from it."""
        self.distorch = state
        outer_sample = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
        self.remove_wrappers_with_key(outer_sample, WRAPPER_KEY)
        self.add_wrapper_with_key(outer_sample, WRAPPER_KEY, functools.partial(_report_after_sampling, state))
        sampler_sample = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE
        self.remove_wrappers_with_key(sampler_sample, WRAPPER_KEY)
        self.add_wrapper_with_key(sampler_sample, WRAPPER_KEY, _conds_on_compute_device)

    def clone(self, *args, **kwargs) -> "StreamingModelPatcher":
        n = super().clone(*args, **kwargs)
        if n.model is self.model:
            n.distorch = self.distorch  # one nn.Module, one engine
        else:  # a deep copy (newer ComfyUI's force_deepcopy / model_override): its own engine, same plan
            state = self.distorch
            engine = StreamingEngine(n.model, state.plan, state.options, state.engine.name)
            n._attach(StreamingState(state.plan, engine, state.options,
                                     dataclasses.replace(state.auto) if state.auto else None))
        return n

    # --- what ComfyUI's memory manager reads --------------------------------------------------------
    def model_size(self) -> int:
        auto = self.distorch.auto
        return auto.model_bytes if auto is not None else self.distorch.plan.device_footprint_bytes

    def get_free_memory(self, device) -> int:
        """What ComfyUI 0.33's calc_cond_batch compares its activation estimate x1.5 with, to batch cond and
        uncond: the free memory, plus what that estimate overstates this run's measured batched forward by
        (nodes.auto_budget; 0 until such a forward was measured). Older ComfyUI never asks a patcher."""
        auto = self.distorch.auto
        return comfy_adapter.free_memory_for_batching(self, device) + (auto.batch_credit_bytes if auto else 0)

    def get_ram_usage(self) -> int:
        return comfy.model_management.module_size(self.model)

    # --- loading ------------------------------------------------------------------------------------
    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        device_to = device_to or self.load_device
        engine = self.distorch.engine
        with self.use_ejected():
            self.unpatch_hooks()
            if not engine.is_loaded:
                engine.load(device_to)
                if self.distorch.auto is not None:
                    self.distorch.auto.note_load(engine.load_stats)
            self._apply_patches(device_to)
            self.model.device = device_to
            self.model.model_lowvram = False
            self.model.lowvram_patch_counter = 0
            self.model.model_loaded_weight_memory = self.distorch.plan.device_footprint_bytes
            self.model.model_offload_buffer_memory = 0
            self.model.current_weight_patches_uuid = self.patches_uuid
            for callback in self.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_LOAD):
                callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
            self.apply_hooks(self.forced_hooks, force_apply=True)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        with self.use_ejected(skip_and_inject_on_exit_only=True):
            self.patch_model(load_weights=False)
            if self.distorch.auto is not None:
                self._replan_for_free_vram(torch.device(device_to))
            before = self.model.model_loaded_weight_memory if self.distorch.engine.is_loaded else 0
            if not self.distorch.engine.is_loaded or self.model.current_weight_patches_uuid != self.patches_uuid:
                try:
                    self.load(device_to)
                except Exception:
                    self.detach()
                    raise
            return self.model.model_loaded_weight_memory - before

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        self.eject_model()
        if unpatch_weights:
            self.unpatch_hooks()
            engine = self.distorch.engine
            if engine.is_loaded:
                engine.unload(device_to or self.offload_device)
            self._restore_all_backups()
            self.model.current_weight_patches_uuid = None
            self.model.model_loaded_weight_memory = 0
            self.model.model_offload_buffer_memory = 0
            self.model.device = device_to or self.offload_device
        for k in list(self.object_patches_backup.keys()):
            comfy.utils.set_attr(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup.clear()

    # --- the automatic budget ---------------------------------------------------------------------------
    def _replan_for_free_vram(self, device: torch.device) -> None:
        """Plan from what is free now (our own footprint counts as free) minus this run's activation reserve;
        switch plans when worth it. A loaded engine is unloaded first; the next load moves only what changed."""
        state, auto = self.distorch, self.distorch.auto
        engine = state.engine
        held = state.plan.device_footprint_bytes if engine.is_loaded else 0
        free = comfy_adapter.free_vram(device) + held
        candidate = plan_auto(auto.request, auto.blocks, auto.other_bytes, free, auto.reserve_bytes,
                              topology=auto.topology, block_seconds=auto.block_seconds)
        if candidate.streamed == state.plan.streamed:
            return
        if engine.is_loaded:
            if not worth_replanning(state.plan, candidate, free, auto.model_bytes, auto.replan_costs()):
                return
            # In place: only blocks that change role move. Patches come off first (a block that starts to
            # stream must be packed unpatched) and go back on at the load that follows.
            self._restore_all_backups()
            self.model.model_loaded_weight_memory = 0
            self.model.current_weight_patches_uuid = None  # makes partially_load call load(), which re-patches
        try:
            engine.replan(candidate)
        except Exception:
            self.detach()  # e.g. out of memory moving blocks up: unload completely, the next prompt loads afresh
            raise
        finally:
            state.plan = engine.plan
        log.info("[DisTorch] %s: compute on %s, automatic budget re-planned for %.2f GB free, %.2f GB kept for %s, "
                 "streamed blocks %s; %s\n%s", type(self.model).__name__, device, free / 1e9, auto.reserve_bytes / 1e9,
                 auto.reserve_reason, candidate.pacing_description(),
                 comfy_adapter.memory_path_line(), candidate.table())
        if candidate.budget_raised:
            log.warning("[DisTorch] %s", candidate.raised_message())

    # --- weight patches -------------------------------------------------------------------------------
    def _streamed_keys(self) -> frozenset[str]:
        return self.distorch.engine.streamed_tensor_names()

    def _apply_patches(self, device_to: torch.device) -> None:
        state = self.distorch
        streamed = self._streamed_keys()
        wanted = {k: _patch_signature(v) for k, v in self.patches.items()}
        changed = [k for k in set(wanted) | set(state.applied)
                   if k not in state.applied or k not in wanted or not _same_patches(wanted[k], state.applied[k])]
        if not changed:
            return
        with state.engine.updating():
            for key in changed:
                self._restore_backup(key, streamed)
                state.applied.pop(key, None)
                if key in wanted:
                    self._patch_key(key, device_to, streamed)
                    state.applied[key] = wanted[key]

    def _patch_key(self, key: str, device_to: torch.device, streamed: frozenset[str]) -> None:
        if attach_patches(self.model, key, self.patches[key], device_to):
            return  # a quantized (GGUF) weight: its layer applies the patches after dequantizing, every forward
        if key not in streamed:
            self.patch_weight_to_device(key, device_to=device_to)
            return
        # Streamed: compute with ComfyUI's own code on the compute device (same kernels and rounding seed as a
        # resident load, hence the same bits), then store the result in the arena. The original Parameter
        # object is put back, because the streamer rebinds that object's data to staging slots.
        engine = self.distorch.engine
        param = comfy.utils.get_attr(self.model, key)
        if key not in self.backup:
            self.backup[key] = Backup(engine.host_view(key).clone(), True)
        self.patch_weight_to_device(key, device_to=device_to)
        patched = comfy.utils.get_attr(self.model, key)
        if patched is not param:
            engine.write_streamed(key, patched.data)
            comfy.utils.set_attr(self.model, key, param)

    def _restore_backup(self, key: str, streamed: frozenset[str]) -> None:
        detach_patches(self.model, key)
        bk = self.backup.pop(key, None)
        if bk is None:
            return
        if key in streamed:
            self.distorch.engine.write_streamed(key, bk.weight)
            return
        current = comfy.utils.get_attr(self.model, key)
        weight = bk.weight.to(current.device)
        if bk.inplace_update:
            comfy.utils.copy_to_param(self.model, key, weight)
        else:
            comfy.utils.set_attr_param(self.model, key, weight)

    def _restore_all_backups(self) -> None:
        state = self.distorch
        streamed = self._streamed_keys()
        with state.engine.updating():
            for key in list(self.backup.keys()):
                self._restore_backup(key, streamed)
        detach_all_patches(self.model)
        state.applied.clear()


def _conds_on_compute_device(executor, guider, *args, **kwargs):
    """The run's conds go to the compute device before its first step (comfy_adapter.stage_conds_on_device): a
    copy ComfyUI makes inside every forward would otherwise queue behind the streamed blocks' copies."""
    patcher = getattr(guider, "model_patcher", None)
    device = getattr(patcher, "load_device", None)
    if isinstance(device, torch.device):
        moved = comfy_adapter.stage_conds_on_device(guider, device)
        if moved:
            log.debug("[DisTorch] %d bytes of conds staged on %s for this run", moved, device)
    return executor(guider, *args, **kwargs)


def _report_after_sampling(state: StreamingState, executor, *args, **kwargs):
    """Telemetry per prompt: reset before sampling, one console line and a registry record after it. With the
    automatic budget it also sizes the activation reserve for this run before ComfyUI loads the model."""
    if state.auto is not None and args:
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")  # outer_sample(noise, latent, sampler, sigmas...)
        note_sampling_run(state.auto, state.engine.root, executor, args[0], sigmas)
    state.engine.telemetry.summary()  # drop what earlier, unreported forwards left behind
    try:
        return executor(*args, **kwargs)
    except torch.OutOfMemoryError:
        if state.auto is not None:
            state.auto.forget_measured_peaks()  # a reserve from a measured peak was too small: estimate again
        raise
    finally:
        stats = state.engine.telemetry.summary()
        if state.auto is not None:
            state.auto.note_block_seconds(state.engine.block_seconds())
            state.auto.note_activation_peak(state.engine.activation_peak_bytes(), state.engine.activation_peak_batch())
        REGISTRY.record_prompt_stats(stats.as_dict())
        log.info("[DisTorch] %s", stats.console_line())
