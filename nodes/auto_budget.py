"""The automatic weight budget of the streaming loaders: how much VRAM a sampling run's activations need.

The plan itself is the engine's (``distorch.budget.plan_auto``); what it needs from ComfyUI is read here, at the
moment a sampling run starts (the OUTER_SAMPLE wrapper runs before ComfyUI loads the model for it): the shape
of one diffusion forward, and whether ComfyUI will run cond and uncond as one batch. ComfyUI's calc_cond_batch
batches them only when ``memory_required(batched shape) * 1.5`` is below the free memory, so that is what the
plan keeps free, and never less than the estimate plus ComfyUI's reserved VRAM and a fixed margin. (ComfyUI's
own minimum inference memory adds 0.8 GB more; on the H200 a Flux 1024x1024 run left about 1 GB of such a
reserve unused, and every GB kept resident is about 18 ms less to stream per step.)

Once a forward of the run's shape and batch was measured (distorch.activation_peak: 0.46 GB for Flux at
1024x1024 and one cond against an estimate-based reserve of 2.02 GB; 0.92 GB for cond and uncond together
against 3.20 GB) the reserve is the measured peak plus ComfyUI's reserved VRAM and a smaller margin. With one
cond per forward there is no batching decision to keep room for. With cond and uncond, ComfyUI would split
them on seeing less free memory than its estimate: where its calc_cond_batch asks the model's patcher how much
is free (ComfyUI 0.33; comfy_adapter.batching_asks_the_patcher), the patcher adds what the estimate overstates
the measured peak by (:attr:`AutoBudget.batch_credit_bytes`), so the batching rule compares the free memory
with the measured need. Where it asks the memory manager directly (0.3.75), ComfyUI's estimate rules. Until a
forward was measured, and in runs whose conds bring models of their own (ControlNets: loaded beside the model,
run beside its forward), it rules everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..distorch.budget import ReplanCosts, StreamRequest
from ..distorch.topology import Topology
from . import comfy_adapter

BATCH_MARGIN = 1.5  # calc_cond_batch: memory_required(batch) * 1.5 < free memory, or the batch is split
ACTIVATION_MARGIN = 512 * 2**20  # beside ComfyUI's estimate and reserve: allocator slack, cuBLAS workspaces
MEASURED_FACTOR = 1.1  # a measured peak, plus 10%: allocator rounding, a few more kernels' scratch
MEASURED_MARGIN = 256 * 2**20  # beside a measured peak and ComfyUI's reserve: tensors the sampler keeps between forwards
SAMPLER_MARGIN = 256 * 2**20  # beside ComfyUI's batching estimate x1.5: what the sampler allocates before it checks
DEFAULT_LATENT_SIDE = 128  # a 1024x1024 image, until a sampling run says otherwise


@dataclass
class AutoBudget:
    """What a model on the automatic budget re-plans with at each load."""

    request: StreamRequest
    blocks: tuple[tuple[str, int], ...]
    other_bytes: int
    model_bytes: int
    topology: Topology | None
    reserve_bytes: int  # VRAM kept free for activations at the next load (updated by each sampling run)
    reserve_reason: str = "a batched cond+uncond forward at 1024x1024 (until a sampling run says otherwise)"
    block_seconds: tuple[float, ...] | None = None  # measured compute per block (in `blocks` order), once known
    extra_reserve_bytes: int = 0  # kept free beside the activations (a GGUF model's dequantization scratch)
    run: tuple[tuple[int, ...], int] | None = None  # (forward input shape, conds per forward) of the latest run
    measured_peaks: dict[tuple[tuple[int, ...], int], int] = field(default_factory=dict)  # per `run`, bytes
    # Bytes the patcher adds to the free memory ComfyUI's batching rule sees (module docstring); 0 unless the
    # coming run's batched forward was measured.
    batch_credit_bytes: int = 0
    run_steps: int | None = None  # sampling steps of the latest run (its sigmas), for pricing a re-plan
    run_brings_models: bool = False  # the latest run loads ControlNets etc. beside the model: measurements skipped
    # Seconds per byte of the first full load: (packing + page-locking a streamed block, uploading a resident one).
    move_rates: tuple[float, float] | None = None

    def note_load(self, stats: Any) -> None:
        """Keep the first full load's rates (``distorch.engine.LoadStats``): what moving a block costs."""
        if self.move_rates is None and stats.packed_bytes > 0 and stats.pinned_bytes > 0 and stats.resident_bytes > 0:
            # Packing covered the newly packed bytes, page-locking every streamed byte: two rates, added.
            self.move_rates = (stats.pack_s / stats.packed_bytes + stats.pin_s / stats.pinned_bytes,
                               stats.resident_s / stats.resident_bytes)

    def replan_costs(self) -> ReplanCosts | None:
        """What a re-plan before the coming run is priced with; None until everything in it was measured."""
        if self.block_seconds is None or self.move_rates is None or not self.run_steps:
            return None
        return ReplanCosts(sum(self.block_seconds), self.run_steps, *self.move_rates)

    def forget_measured_peaks(self) -> None:
        """A sampling run ran out of memory: plan with ComfyUI's estimate again."""
        self.measured_peaks.clear()

    def note_activation_peak(self, peak_bytes: int | None, batch: int | None = None) -> None:
        """Keep the highest activation peak measured for a forward of the current run's shape, under the number
        of conds that forward really ran (``batch`` / the shape's batch: ComfyUI may have split cond and
        uncond); with ``batch`` unknown only a one-cond run's measurement is kept."""
        if peak_bytes is None or self.run is None or self.run_brings_models:
            return
        shape, entries = self.run
        if batch is not None and shape and shape[0] > 0 and batch % shape[0] == 0:
            entries = batch // shape[0]
        elif entries != 1:
            return
        key = (shape, entries)
        self.measured_peaks[key] = max(peak_bytes, self.measured_peaks.get(key, 0))

    def note_block_seconds(self, measured: dict[str, float] | None) -> None:
        """Keep a measured forward's compute per block, for pacing the next plan (distorch.profile)."""
        if measured is not None and all(name in measured for name, _ in self.blocks):
            self.block_seconds = tuple(measured[name] for name, _ in self.blocks)


def _batched_need(model: Any, shape: list[int], entries: int) -> int | None:
    """ComfyUI's activation estimate for ``entries`` conds of a forward input of ``shape`` in one batch."""
    return comfy_adapter.activation_bytes(model, [shape[0] * entries, *shape[1:]])


def reserve_for(model: Any, shape: list[int], entries: int) -> int:
    """VRAM to keep free so that ``entries`` conds of a forward input of ``shape`` run as one batch: ComfyUI's
    estimate x1.5 must still be free when calc_cond_batch checks, after the sampler has put its latents, conds
    and noise on the device (SAMPLER_MARGIN; without it the H200's first Flux prompt at cfg 3.5 split cond and
    uncond whenever the plan happened to fill the reserve to within a few MB)."""
    need = _batched_need(model, shape, entries)
    if need is None:
        return 0
    batching = int(need * BATCH_MARGIN) + (SAMPLER_MARGIN if entries > 1 else 0)
    return max(batching, need + comfy_adapter.reserved_vram() + ACTIVATION_MARGIN)


def default_reserve(model: Any) -> int:
    """The reserve before any sampling run was seen: cond and uncond batched at 1024x1024 (0 for models without
    an activation estimate or a latent format)."""
    latent_format = getattr(model, "latent_format", None)
    if latent_format is None or getattr(model, "memory_required", None) is None:
        return 0
    channels = getattr(latent_format, "latent_channels", 4)
    return reserve_for(model, [1, channels, DEFAULT_LATENT_SIDE, DEFAULT_LATENT_SIDE], 2)


def measured_reserve(peak_bytes: int) -> int:
    """VRAM to keep free for forwards whose activation peak was measured."""
    return int(peak_bytes * MEASURED_FACTOR) + comfy_adapter.reserved_vram() + MEASURED_MARGIN


def batch_credit(model: Any, shape: list[int], entries: int, peak_bytes: int) -> int:
    """How much ComfyUI's batching rule (its estimate x1.5 against free memory) overstates a batched forward
    whose peak was measured: the patcher reports this much more free memory, so ComfyUI batches exactly when the
    measured peak (plus 10%) fits in what is really free."""
    need = _batched_need(model, shape, entries)
    if need is None:
        return 0
    return max(int(need * BATCH_MARGIN) - int(peak_bytes * MEASURED_FACTOR), 0)


def bounding_peak(peaks: dict[tuple[tuple[int, ...], int], int],
                  run: tuple[tuple[int, ...], int]) -> tuple[int | None, str]:
    """The measured peak that bounds a forward of ``run``: its own, else the smallest one measured for a forward
    of the same latent with at least as many samples in the batch (activations grow with the batch: a cfg 1
    run after a measured cfg 3.5 run keeps what the batch of two needed, not ComfyUI's estimate)."""
    if run in peaks:
        return peaks[run], ""
    shape, entries = run
    if not shape:
        return None, ""
    larger = [(peak, s[0] * e) for (s, e), peak in peaks.items()
              if s and s[1:] == shape[1:] and s[0] * e >= shape[0] * entries]
    if not larger:
        return None, ""
    peak, batch = min(larger)
    return peak, f" (of a batch of {batch}: at most that)"


def note_sampling_run(auto: AutoBudget, model: Any, executor: Any, noise: Any, sigmas: Any = None) -> None:
    """Called as a sampling run starts, before its load: size the reserve for this run's forwards."""
    auto.run_steps = max(len(sigmas) - 1, 0) if sigmas is not None and hasattr(sigmas, "__len__") else None
    found = comfy_adapter.forward_shape(executor, noise)
    if found is None:
        auto.run = None
        return
    shape, entries = found
    auto.run = (tuple(shape), entries)
    described = f"{entries} cond(s) of a {'x'.join(map(str, shape))} latent in one forward"
    auto.batch_credit_bytes = 0
    # A run with ControlNets (or other models in its conds) keeps ComfyUI's estimate: they load beside the model
    # and run beside its forward, which was measured without them.
    auto.run_brings_models = comfy_adapter.run_brings_models(executor)
    peak, source = (None, "") if auto.run_brings_models else bounding_peak(auto.measured_peaks, auto.run)
    if peak is not None and (entries == 1 or comfy_adapter.batching_asks_the_patcher()):
        # A measured peak includes a GGUF model's dequantization scratch: no extra reserve beside it.
        auto.reserve_bytes = measured_reserve(peak)
        auto.reserve_reason = f"{described}, measured peak {peak / 1e9:.2f} GB{source}"
        if entries > 1:
            auto.batch_credit_bytes = batch_credit(model, shape, entries, peak)
        return
    auto.reserve_bytes = reserve_for(model, shape, entries) + auto.extra_reserve_bytes
    auto.reserve_reason = described
