"""Which paths bring streamed weights to the compute GPU, how fast each is, and which of them share a bottleneck.

A path is named by its source: ``cpu`` (pinned host RAM -> compute GPU) or a donor GPU ``cuda:N`` (its VRAM ->
compute GPU). Every path belongs to a *group*, the bottleneck it goes through. Host copies and PCIe peer copies
both enter the compute GPU through its one x16 link (docs/physical-model.md), so they are one group,
``pcie:<compute>``, and their bandwidths do not add up; an NVLink donor does not touch that link and is a group
of its own. Which case a machine is in is not guessed from names: a concurrent probe (host and donor copies at
the same time) decides it, and only that pure decision (:func:`classify_donor`) needs no GPU, so it is what the
CPU tests exercise.

Probes cost about a second per path, so a topology is cached in memory and, with ``cache_path``, in a JSON file
keyed by the machine (GPU names and count, torch version): later loads read it instead of probing again.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .bandwidth import measure_d2d_bandwidth, measure_h2d_bandwidth
from .registry import REGISTRY

log = logging.getLogger(__name__)

GB = 1e9
INDEPENDENT_FRACTION = 0.8  # concurrent total >= this x (sum of singles): the paths do not share a bottleneck


@dataclass(frozen=True)
class Link:
    """One path from a store to the compute device."""

    source: str
    target: str
    gbps: float | None  # measured alone; None = not measured (CPU compute, no CUDA)
    peer: bool  # donor GPUs only: direct peer access (else copies bounce through pinned host memory)
    group: str  # the bottleneck the path goes through; paths of one group share its bandwidth


@dataclass(frozen=True)
class DonorMeasurement:
    """What the probe measured for one donor GPU (the input of the pure decision)."""

    donor: str
    peer: bool
    gbps: float | None  # donor -> compute alone
    concurrent_gbps: float | None  # host -> compute and donor -> compute at the same time, bytes of both / time


@dataclass(frozen=True)
class Topology:
    compute: str
    links: dict[str, Link]  # by source device
    group_gbps: dict[str, float] = field(default_factory=dict)  # concurrent measurement of a shared group

    def group_of(self, store: str) -> str | None:
        link = self.links.get(store)
        return link.group if link else None

    def group_rate(self, group: str, stores: Iterable[str] | None = None) -> float | None:
        """The group's bandwidth when ``stores`` (default: all its paths) are used together: the concurrent
        measurement when more than one of them is used and it was measured, else the fastest single path."""
        members = [l for l in self.links.values() if l.group == group and (stores is None or l.source in set(stores))]
        if len(members) > 1 and group in self.group_gbps:
            return self.group_gbps[group]
        rates = [l.gbps for l in members if l.gbps]
        return max(rates) if rates else None

    def effective_gbps(self, stores: Iterable[str]) -> float:
        """Bandwidth streaming from ``stores`` at once: independent groups add up, paths inside one group do not."""
        stores = [s for s in stores if s in self.links]
        groups = dict.fromkeys(self.links[s].group for s in stores)
        return sum(self.group_rate(g, stores) or 0.0 for g in groups)

    def as_dict(self) -> dict:
        return {"compute": self.compute, "links": {k: asdict(v) for k, v in self.links.items()},
                "group_gbps": dict(self.group_gbps)}

    @classmethod
    def from_dict(cls, data: dict) -> "Topology":
        return cls(data["compute"], {k: Link(**v) for k, v in data["links"].items()},
                   {k: float(v) for k, v in data.get("group_gbps", {}).items()})

    def describe(self) -> str:
        """One line per path, for the log and the benchmark."""
        lines = [f"topology of {self.compute}:"]
        for link in self.links.values():
            rate = f"{link.gbps:.1f} GB/s" if link.gbps else "not measured"
            peer = " peer" if link.peer else (" via pinned host" if link.source.startswith("cuda") else "")
            lines.append(f"  {link.source} -> {link.target}{peer}: {rate}, bottleneck {link.group}")
        for group, rate in self.group_gbps.items():
            lines.append(f"  {group} measured concurrently: {rate:.1f} GB/s")
        return "\n".join(lines)


# -- the pure decision --------------------------------------------------------------------------------------
def host_group(compute: str) -> str:
    return f"pcie:{compute}" if compute.startswith("cuda") else f"memory:{compute}"


def classify_donor(compute: str, host_gbps: float | None, m: DonorMeasurement,
                   threshold: float = INDEPENDENT_FRACTION) -> str:
    """The bottleneck group of a donor's path. Independent only when peer access exists AND the concurrent probe
    reached ``threshold`` of the sum of the two single rates; without peer access the copy bounces through host
    memory and so crosses the compute GPU's link; without a concurrent measurement, shared (the safe guess: the
    planner then never counts bandwidth that may not exist)."""
    if not m.peer or host_gbps is None or m.gbps is None or m.concurrent_gbps is None:
        return host_group(compute)
    if m.concurrent_gbps >= threshold * (host_gbps + m.gbps):
        return f"nvlink:{m.donor}->{compute}"  # independent of the x16 link: in practice NVLink
    return host_group(compute)


def build_topology(compute: str, host_gbps: float | None, donors: Sequence[DonorMeasurement],
                   threshold: float = INDEPENDENT_FRACTION) -> Topology:
    """A topology from measurements (no GPU needed). The host path always exists (the CPU arena)."""
    host = host_group(compute)
    links = {"cpu": Link("cpu", compute, host_gbps, False, host)}
    group_gbps: dict[str, float] = {}
    for m in donors:
        group = classify_donor(compute, host_gbps, m, threshold)
        links[m.donor] = Link(m.donor, compute, m.gbps, m.peer, group)
        if group == host and m.concurrent_gbps is not None:
            # Every concurrent probe of a shared donor measures the same link: keep the best.
            group_gbps[host] = max(group_gbps.get(host, 0.0), m.concurrent_gbps)
    return Topology(compute, links, group_gbps)


def concurrent_split(total_bytes: int, host_gbps: float, donor_gbps: float) -> tuple[int, int]:
    """Bytes for the host and donor copies of the concurrent probe, in proportion to their single rates, so that
    both would finish together if independent; with equal sizes the faster path would idle and the total would
    look shared even on NVLink. 256-aligned, at least 1 MiB each."""
    share = host_gbps / (host_gbps + donor_gbps)
    host = max(int(total_bytes * share) // 256 * 256, 1 << 20)
    return host, max((total_bytes - host) // 256 * 256, 1 << 20)


# -- the GPU probe ------------------------------------------------------------------------------------------
def _cuda(device: str) -> torch.device:
    d = torch.device(device)
    return torch.device("cuda", d.index if d.index is not None else 0)


def measure_concurrent(compute: str, donor: str, host_gbps: float, donor_gbps: float,
                       total_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """GB/s of a host->compute and a donor->compute copy issued at the same time on separate streams (the host
    copy on a compute-side stream, the donor copy on a donor-side stream, as the streamer issues them): total
    bytes / wall time from issue until both are done, best of ``repeats``."""
    c, d = _cuda(compute), _cuda(donor)
    host_n, donor_n = concurrent_split(total_bytes, host_gbps, donor_gbps)
    host = torch.empty(host_n, dtype=torch.uint8, pin_memory=True)
    src = torch.empty(donor_n, dtype=torch.uint8, device=d)
    dst_h = torch.empty(host_n, dtype=torch.uint8, device=c)
    dst_d = torch.empty(donor_n, dtype=torch.uint8, device=c)
    s_host, s_donor, s_land = torch.cuda.Stream(c), torch.cuda.Stream(d), torch.cuda.Stream(c)
    best = 0.0
    for i in range(repeats + 1):  # the first round warms up (peer access is enabled on the first copy)
        torch.cuda.synchronize(c)
        torch.cuda.synchronize(d)
        start = time.perf_counter()
        with torch.cuda.stream(s_host):
            dst_h.copy_(host, non_blocking=True)
        with torch.cuda.stream(s_land), torch.cuda.stream(s_donor):
            dst_d.copy_(src, non_blocking=True)
        for s in (s_host, s_donor, s_land):
            s.synchronize()
        if i:
            best = max(best, (host_n + donor_n) / (time.perf_counter() - start) / GB)
    return best


def measure_links(compute: str, donors: Sequence[str]) -> tuple[float | None, list[DonorMeasurement]]:
    """Measure what exists: the host path of a CUDA compute device and every donor GPU present on this machine."""
    if not compute.startswith("cuda") or not torch.cuda.is_available():
        return None, []
    host = measure_h2d_bandwidth(compute)
    count = torch.cuda.device_count()
    found = []
    for donor in donors:
        d = torch.device(donor)
        if d.type != "cuda" or d.index is None or d.index >= count or d == _cuda(compute):
            continue
        peer = bool(torch.cuda.can_device_access_peer(_cuda(compute).index, d.index))
        gbps = measure_d2d_bandwidth(donor, compute)
        concurrent = measure_concurrent(compute, donor, host, gbps) if host and gbps else None
        found.append(DonorMeasurement(donor, peer, gbps, concurrent))
    return host, found


def machine_key() -> str:
    """What makes two probes comparable: same torch, same GPUs in the same order."""
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return f"torch={torch.__version__};cuda={torch.version.cuda};gpus={len(names)}:{'|'.join(names)}"


Measure = Callable[[str, Sequence[str]], tuple[float | None, Sequence[DonorMeasurement]]]


def probe_topology(compute: str, stores: Iterable[str], cache_path: str | os.PathLike | None = None,
                   measure: Measure = measure_links, machine: str | None = None) -> Topology:
    """The topology between ``compute`` and ``stores`` (devices; ``cpu`` is always included), from the cache when
    this machine probed it before. ``measure`` and ``machine`` are injectable for tests."""
    donors = sorted({s for s in stores if s != "cpu" and s != compute})
    machine = machine if machine is not None else machine_key()
    key = f"{compute}<-{','.join(['cpu', *donors])}"
    cached = REGISTRY.topologies.get((machine, key)) or _read_cache(cache_path, machine, key)
    if cached is not None:
        REGISTRY.topologies[(machine, key)] = cached
        return cached
    host_gbps, measured = measure(compute, donors)
    topology = build_topology(compute, host_gbps, measured)
    log.info("[DisTorch] probed %s", topology.describe())
    REGISTRY.topologies[(machine, key)] = topology
    _write_cache(cache_path, machine, key, topology)
    return topology


def _read_cache(cache_path: str | os.PathLike | None, machine: str, key: str) -> Topology | None:
    if cache_path is None or not Path(cache_path).is_file():
        return None
    try:
        entry = json.loads(Path(cache_path).read_text()).get(machine, {}).get(key)
        return Topology.from_dict(entry) if entry else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a corrupt or foreign cache only costs a new probe


def _write_cache(cache_path: str | os.PathLike | None, machine: str, key: str, topology: Topology) -> None:
    if cache_path is None:
        return
    path = Path(cache_path)
    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored.setdefault(machine, {})[key] = topology.as_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2, sort_keys=True))


__all__ = ["Link", "DonorMeasurement", "Topology", "build_topology", "classify_donor", "concurrent_split",
           "measure_concurrent", "measure_links", "machine_key", "probe_topology", "host_group"]
