"""Byte sizes with units, and the lexer for numeric amounts shared with the allocation grammar.

Units are case-insensitive: ``b, kb, mb, gb, tb`` are powers of 1000 and ``kib, mib, gib, tib``
powers of 1024. Decimal numbers are allowed (``2.5gb``); the result is rounded half-to-even to whole
bytes. A bare number is *not* a byte size: in allocation strings it means a fraction of a device's
memory, so :func:`parse_bytes` demands a unit.
"""
from __future__ import annotations

import decimal
import re
from typing import NamedTuple

from .errors import AllocationError

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
UNIT_HINT = "use b, kb, mb, gb, tb (decimal) or kib, mib, gib, tib (binary)"

# Largest unit first, so format_bytes picks the biggest unit that divides exactly.
_BY_SIZE = sorted(UNITS.items(), key=lambda item: item[1], reverse=True)

MAX_BYTES = 2**63 - 1  # torch sizes are int64; anything larger is a typo, not a budget
MAX_NUMBER_CHARS = 32  # float reprs need at most 24; longer literals are typos or attacks
_MAX_MAGNITUDE = 30  # decimal exponent bound: 1e30 bytes overflows int64 in every unit

# ASCII only: Python's float() would otherwise accept Arabic-Indic and other Unicode digits.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_UNIT_WORD = re.compile(r"[A-Za-z]+", re.ASCII)
_NON_FINITE = ("nan", "inf")


class Amount(NamedTuple):
    """A lexed amount: the numeric literal, what follows it, and where that starts in the token."""

    number: str
    suffix: str
    suffix_pos: int


def _error(problem: str, token: str, position: int, text: str, hint: str) -> AllocationError:
    return AllocationError(problem, token=token, position=position, text=text, hint=hint, what="amount")


def split_amount(token: str) -> Amount:
    """Split an already-stripped amount like ``'2.5 GB'`` into number and suffix.

    Raises :class:`AllocationError` (positions relative to ``token``) for anything that is not a
    non-negative, finite, reasonably short number.
    """
    if token.lstrip("+-").lower().startswith(_NON_FINITE):
        raise _error("not a finite number", token, 0, token, "amounts must be finite numbers like 8gb")
    match = _NUMBER.match(token)
    if match is None:
        raise _error("expected a number or '*', got", token, 0, token, "write e.g. 8gb, 25% or 0.5")
    number = match.group()
    if number.startswith("-"):
        raise _error("negative amount", number, 0, token, "amounts must be zero or more")
    if len(number) > MAX_NUMBER_CHARS:
        raise _error(
            "number too long", number, 0, token, f"use at most {MAX_NUMBER_CHARS} characters, e.g. a larger unit"
        )
    rest = token[match.end() :]
    suffix = rest.lstrip()
    return Amount(number, suffix, match.end() + len(rest) - len(suffix))


def check_unit(token: str, amount: Amount) -> int:
    """The multiplier of ``amount.suffix``, or an :class:`AllocationError` naming the bad suffix."""
    multiplier = UNITS.get(amount.suffix.lower())
    if multiplier is not None:
        return multiplier
    problem = "unknown unit" if _UNIT_WORD.fullmatch(amount.suffix) else "unexpected characters"
    raise _error(problem, amount.suffix, amount.suffix_pos, token, UNIT_HINT)


def to_bytes(token: str, amount: Amount, multiplier: int) -> int:
    """``amount.number * multiplier`` rounded to whole bytes; overflow past MAX_BYTES is an error."""
    try:
        number = decimal.Decimal(amount.number)  # Decimal keeps "2.5gb" exact, which floats would not
    except decimal.InvalidOperation:
        number = decimal.Decimal(10) ** _MAX_MAGNITUDE  # exponent beyond Decimal's range: an overflow
    if number.adjusted() < -_MAX_MAGNITUDE:
        return 0  # far below half a byte even in tib; skip exact arithmetic on absurd exponents
    if number.adjusted() >= _MAX_MAGNITUDE:
        result = MAX_BYTES + 1
    else:
        with decimal.localcontext() as ctx:
            ctx.prec = 80  # exact: at most 32 significant digits times a 13-digit multiplier
            result = int((number * multiplier).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
    if result > MAX_BYTES:
        raise _error("amount overflows", token, 0, token, f"byte amounts must be at most {format_bytes(MAX_BYTES)}")
    return result


def to_float(token: str, amount: Amount) -> float:
    """``amount.number`` as a finite float; literals beyond float range are an error."""
    value = float(amount.number)
    if value == float("inf"):
        raise _error("amount overflows", token, 0, token, "use a smaller number")
    return value


def parse_bytes(text: str) -> int:
    """Bytes in ``text``, e.g. ``'8gb'`` -> 8_000_000_000, ``'1.5 GiB'`` -> 1_610_612_736.

    Raises :class:`AllocationError` (a ``ValueError``) naming the bad token and its position.
    """
    if not isinstance(text, str):
        raise _error("expected a string, got", type(text).__name__, 0, repr(text), "write e.g. 8gb")
    stripped = text.strip()
    if not stripped:
        hint = "write e.g. 8gb"
        raise AllocationError("empty byte size", token=text, position=0, text=text, hint=hint, what="byte size")
    lead = len(text) - len(text.lstrip())
    try:
        amount = split_amount(stripped)
        if not amount.suffix:
            raise _error("missing unit after", amount.number, 0, stripped, UNIT_HINT)
        return to_bytes(stripped, amount, check_unit(stripped, amount))
    except AllocationError as error:
        raise error.relocated(text, lead, what="byte size") from None


def format_bytes(n: int) -> str:
    """Canonical text for ``n`` bytes: the largest unit that represents it exactly (``8gb``, ``1gib``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"byte counts are non-negative integers, got {n!r}")
    if n == 0:
        return "0b"
    for unit, size in _BY_SIZE:
        if n % size == 0:
            return f"{n // size}{unit}"
    raise AssertionError("unreachable: 'b' divides every integer")
