"""The expert allocation string: which device holds how much of a model.

Grammar (whitespace allowed around every token, one trailing ``;`` allowed)::

    allocation := entry (';' entry)* [';']
    entry      := device ',' amount
    amount     := '*' | number unit | number '%' | number

Modes -- every entry of one string uses the same one (``*`` fits any):

* ``bytes``    ``cuda:0,8gb;cpu,*``    a byte budget per device (see :mod:`distorch.units`).
* ``ratio``    ``cuda:0,25%;cpu,75%``  shares of the model. Without ``*`` they are normalised by their
  sum (which must not be zero); with ``*`` they are percentages of the model (sum <= 100) and ``*``
  takes the rest.
* ``fraction`` ``cuda:0,0.5;cpu,0.25`` a fraction in [0, 1] of that device's total memory.

``*`` appears at most once; that device takes whatever the others leave. A string holding only a
wildcard (``cpu,*``) is in ``bytes`` mode by convention. Devices are canonical
(:func:`distorch.devices.canonical_device`) and listed once each; whether they exist on this machine
is not checked here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, NamedTuple

from . import units
from .devices import NAME_HINT, canonical_device
from .errors import AllocationError, BudgetError, DeviceError

Mode = Literal["bytes", "ratio", "fraction"]
MAX_TEXT_CHARS = 10_000  # a real allocation is a few dozen characters; bound the work on garbage
_EXAMPLE = "write entries like 'cuda:0,8gb;cpu,*'"


@dataclass(frozen=True)
class AllocationEntry:
    """One device's share: int bytes, float percent, float fraction, or ``None`` for the wildcard."""

    device: str
    amount: float | int | None

    @property
    def is_wildcard(self) -> bool:
        return self.amount is None


class _Token(NamedTuple):
    text: str
    pos: int


class _Parsed(NamedTuple):
    entry: AllocationEntry
    mode: Mode | None  # None for the wildcard, which fits any mode
    device: _Token
    amount: _Token


def _strip(text: str, pos: int) -> _Token:
    """``text`` without surrounding whitespace, with the position of its first kept character."""
    return _Token(text.strip(), pos + len(text) - len(text.lstrip()))


class _Parser:
    """One parse of one string; holds it so that every error can quote it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, problem: str, token: _Token, hint: str) -> AllocationError:
        return AllocationError(problem, token=token.text, position=token.pos, text=self.text, hint=hint)

    def entries(self) -> list[_Token]:
        """The raw entries with their offsets; a trailing ';' is dropped, other empty entries fail."""
        raw, pos = [], 0
        for chunk in self.text.split(";"):
            raw.append(_Token(chunk, pos))
            pos += len(chunk) + 1
        if len(raw) > 1 and not raw[-1].text.strip():
            raw.pop()
        for chunk in raw:
            if not chunk.text.strip():
                where = _Token(";", chunk.pos + len(chunk.text))
                raise self.fail("empty entry before", where, f"remove the extra ';' or {_EXAMPLE}")
        return raw

    def entry(self, chunk: _Token) -> _Parsed:
        """Parse one ``device,amount`` entry."""
        comma = chunk.text.find(",")
        if comma < 0:
            raise self.fail("missing ',' in entry", _strip(chunk.text, chunk.pos), _EXAMPLE)
        device = _strip(chunk.text[:comma], chunk.pos)
        amount = _strip(chunk.text[comma + 1 :], chunk.pos + comma + 1)
        name = self.device(device)
        extra = amount.text.find(",")
        if extra >= 0:
            raise self.fail("unexpected", _Token(",", amount.pos + extra), f"one ',' per entry; {_EXAMPLE}")
        if not amount.text:
            raise self.fail("missing amount after", _Token(",", chunk.pos + comma), "write e.g. 8gb, 25%, 0.5 or *")
        if amount.text == "*":
            return _Parsed(AllocationEntry(name, None), None, device, amount)
        value, mode = self.amount(amount)
        return _Parsed(AllocationEntry(name, value), mode, device, amount)

    def device(self, token: _Token) -> str:
        if not token.text:
            raise self.fail("missing device before", _Token(",", token.pos), "write e.g. cuda:0 or cpu")
        try:
            return canonical_device(token.text)
        except DeviceError:
            raise self.fail("unknown device", token, NAME_HINT) from None

    def amount(self, token: _Token) -> tuple[float | int, Mode]:
        try:
            value, mode = _read_amount(token.text)
        except AllocationError as error:
            raise error.relocated(self.text, token.pos) from None
        if mode == "fraction" and value > 1:
            hint = "fractions of device memory lie in [0, 1]; add a unit (8gb) or a % for other modes"
            raise self.fail("fraction above 1", token, hint)
        return value, mode


def _read_amount(token: str) -> tuple[float | int, Mode]:
    """Value and mode of one amount token; errors are positioned relative to ``token``."""
    lexed = units.split_amount(token)
    if lexed.suffix == "%":
        return units.to_float(token, lexed), "ratio"
    if not lexed.suffix:
        return units.to_float(token, lexed), "fraction"
    return units.to_bytes(token, lexed, units.check_unit(token, lexed)), "bytes"


def _check_devices(parser: _Parser, parsed: list[_Parsed]) -> None:
    seen: set[str] = set()
    wildcard = False
    for entry, _, device, amount in parsed:
        if entry.device in seen:
            raise parser.fail(f"duplicate device (canonical {entry.device!r})", device, "list each device once")
        seen.add(entry.device)
        if entry.is_wildcard and wildcard:
            raise parser.fail("second wildcard", amount, "only one device may take the rest ('*')")
        wildcard = wildcard or entry.is_wildcard


def _check_mode(parser: _Parser, parsed: list[_Parsed]) -> Mode:
    mode: Mode | None = None
    for entry, entry_mode, _, amount in parsed:
        if entry_mode is None:
            continue
        if mode is not None and entry_mode != mode:
            hint = "use one mode for all entries: bytes (8gb), ratio (25%) or fraction (0.5)"
            raise parser.fail(f"{entry_mode} amount for {entry.device!r} mixed with {mode} amounts:", amount, hint)
        mode = entry_mode
    return mode or "bytes"


def _check_ratios(parser: _Parser, parsed: list[_Parsed]) -> None:
    has_wildcard = any(p.entry.is_wildcard for p in parsed)
    total = Fraction(0)
    last = parsed[-1].amount
    for entry, _, _, amount in parsed:
        if entry.is_wildcard:
            continue
        total += Fraction(entry.amount)
        last = amount
        if has_wildcard and total > 100:
            raise parser.fail("ratios exceed 100% at", amount, "with '*' the percentages must sum to 100 or less")
    if not has_wildcard and total == 0:
        raise parser.fail("ratios sum to zero at", last, "give at least one device a share above 0%")


def parse_allocation(text: str) -> Allocation:
    """Parse an allocation string; any problem raises :class:`AllocationError` and nothing else."""
    if not isinstance(text, str):
        raise AllocationError("expected a string, got", token=type(text).__name__, position=0, hint=_EXAMPLE)
    parser = _Parser(text)
    if len(text) > MAX_TEXT_CHARS:
        hint = f"keep it under {MAX_TEXT_CHARS} characters"
        raise parser.fail("string too long from", _Token(text[MAX_TEXT_CHARS:], MAX_TEXT_CHARS), hint)
    if not text.strip():
        raise parser.fail("empty allocation", _Token(text, 0), _EXAMPLE)
    parsed = [parser.entry(chunk) for chunk in parser.entries()]
    _check_devices(parser, parsed)
    mode = _check_mode(parser, parsed)
    if mode == "ratio":
        _check_ratios(parser, parsed)
    return Allocation(mode, tuple(p.entry for p in parsed))


def _format_amount(mode: Mode, amount: float | int | None) -> str:
    if amount is None:
        return "*"
    if mode == "bytes":
        return units.format_bytes(amount)
    # repr is the shortest text that reads back as the very same float
    return repr(float(amount)) + ("%" if mode == "ratio" else "")


@dataclass(frozen=True)
class Allocation:
    """A parsed allocation: its mode and its entries in the order written."""

    mode: Mode
    entries: tuple[AllocationEntry, ...]

    @classmethod
    def parse(cls, text: str) -> Allocation:
        return parse_allocation(text)

    def format(self) -> str:
        """Canonical text; ``parse_allocation(a.format()) == a`` for every valid allocation."""
        return ";".join(f"{e.device},{_format_amount(self.mode, e.amount)}" for e in self.entries)

    def __str__(self) -> str:
        return self.format()

    @property
    def wildcard(self) -> AllocationEntry | None:
        return next((e for e in self.entries if e.is_wildcard), None)

    def resolve(self, model_bytes: int, device_totals: dict[str, int]) -> dict[str, int]:
        """Bytes of a ``model_bytes`` model that each listed device holds, in entry order.

        Explicit entries are served in order until the model is covered (a surplus stays unused);
        the wildcard takes what remains. Without a wildcard, an allocation that covers less than the
        model raises :class:`BudgetError`. Byte and fraction budgets above a device's total raise
        :class:`BudgetError`; a device absent from ``device_totals`` raises :class:`DeviceError`.
        Ratio and wildcard shares are not capped by device totals.
        """
        if isinstance(model_bytes, bool) or not isinstance(model_bytes, int) or model_bytes < 0:
            raise ValueError(f"model_bytes must be a non-negative int, got {model_bytes!r}")
        totals = {canonical_device(name): int(size) for name, size in device_totals.items()}
        for entry in self.entries:
            _require_total(entry.device, totals)
        assigned = _assign(self._budgets(model_bytes, totals), self.wildcard, model_bytes)
        return {entry.device: assigned[entry.device] for entry in self.entries}

    def _budgets(self, model_bytes: int, totals: dict[str, int]) -> dict[str, int]:
        """Byte budget of every explicit entry, checked against hardware where it is a budget."""
        explicit = [e for e in self.entries if not e.is_wildcard]
        if self.mode == "ratio":
            return _ratio_budgets(explicit, model_bytes, has_wildcard=self.wildcard is not None)
        budgets = {}
        for entry in explicit:
            total = totals[entry.device]
            budget = entry.amount if self.mode == "bytes" else math.floor(Fraction(entry.amount) * total)
            if budget > total:
                raise BudgetError(
                    f"allocation gives {entry.device!r} {units.format_bytes(budget)} but it has only "
                    f"{units.format_bytes(total)} ({total} bytes); lower the amount or give that device '*'",
                    device=entry.device,
                )
            budgets[entry.device] = budget
        return budgets

    @classmethod
    def from_virtual_vram(
        cls, compute_device: str, virtual_vram_gb: float, donor_device: str, model_bytes: int
    ) -> Allocation:
        """The one-number form: move ``virtual_vram_gb`` GB (1 GB = 1e9 bytes) of the model to the donor.

        ``v = round(virtual_vram_gb * 1e9)``; the result is the bytes-mode allocation
        ``compute,max(model_bytes - v, 0);donor,min(v, model_bytes)``, which covers the model exactly.
        """
        if isinstance(model_bytes, bool) or not isinstance(model_bytes, int) or model_bytes < 0:
            raise ValueError(f"model_bytes must be a non-negative int, got {model_bytes!r}")
        compute, donor = _device_arg(compute_device, "compute device"), _device_arg(donor_device, "donor device")
        if compute == donor:
            raise AllocationError(
                "donor device is the compute device", token=donor_device, position=0, text=donor_device,
                hint="pick a different donor, e.g. cpu", what="virtual VRAM donor",
            )
        moved = min(virtual_vram_bytes(virtual_vram_gb), model_bytes)
        return cls("bytes", (AllocationEntry(compute, model_bytes - moved), AllocationEntry(donor, moved)))


def _require_total(device: str, totals: dict[str, int]) -> None:
    if device not in totals:
        available = ", ".join(totals) or "none"
        message = f"allocation names device {device!r} which is not available; available: {available}"
        raise DeviceError(message, device=device)


def _ratio_budgets(explicit: list[AllocationEntry], model_bytes: int, has_wildcard: bool) -> dict[str, int]:
    """Exact proportional split; without a wildcard the leftover bytes go by largest remainder."""
    shares = [Fraction(e.amount) for e in explicit]
    denominator = Fraction(100) if has_wildcard else sum(shares)
    exact = [share * model_bytes / denominator for share in shares]
    budgets = [math.floor(x) for x in exact]
    if not has_wildcard:
        leftover = model_bytes - sum(budgets)
        by_remainder = sorted(range(len(exact)), key=lambda i: budgets[i] - exact[i])  # stable: ties keep order
        for i in by_remainder[:leftover]:
            budgets[i] += 1
    return {e.device: b for e, b in zip(explicit, budgets)}


def _assign(budgets: dict[str, int], wildcard: AllocationEntry | None, model_bytes: int) -> dict[str, int]:
    remaining, assigned = model_bytes, {}
    for device, budget in budgets.items():
        assigned[device] = min(budget, remaining)
        remaining -= assigned[device]
    if wildcard is not None:
        assigned[wildcard.device], remaining = remaining, 0
    if remaining:
        covered = model_bytes - remaining
        raise BudgetError(
            f"allocation covers only {covered} of {model_bytes} model bytes; add 'cpu,*' to put the rest on the CPU"
        )
    return assigned


def _device_arg(name: str, role: str) -> str:
    try:
        return canonical_device(name)
    except DeviceError:
        text = name if isinstance(name, str) else repr(name)
        raise AllocationError(
            f"unknown {role}", token=text, position=0, text=text, hint="use cpu, cuda:0, xpu:0 or mps", what=role
        ) from None


def virtual_vram_bytes(virtual_vram_gb: float) -> int:
    """Bytes that `virtual_vram_gb` GB (1 GB = 1e9 bytes) means; bad numbers raise AllocationError."""
    try:
        value = float(virtual_vram_gb)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        text = repr(virtual_vram_gb)
        raise AllocationError(
            "virtual VRAM must be a finite number of GB >= 0, got", token=text, position=0, text=text,
            hint="e.g. 4.0 moves 4 GB of the model to the donor", what="virtual VRAM",
        )
    return round(value * 1e9)
