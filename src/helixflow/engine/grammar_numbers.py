"""GBNF for JSON numbers within bounds: integer ranges digit by digit, and decimals whose
bounds are whole numbers (``minimum``, ``exclusiveMaximum``...)."""

from __future__ import annotations

MAX_DIGITS = 16
"""Digits of an unbounded integer part (as in the plain ``integer`` rule)."""

Bound = tuple[int, bool]
"""A bound's value and whether it is exclusive."""

_FRACTION = f'("." [0-9]{{1,{MAX_DIGITS - 1}}})'
_NONZERO_FRACTION = f'"." [0-9]{{0,{MAX_DIGITS - 2}}} [1-9]'
_ZERO_FRACTION = '(".0")'


def integer_range(low: int | None, high: int | None) -> str:
    """JSON integers ``n`` with ``low <= n <= high`` (None: unbounded on that side)."""
    alts: list[str] = []
    if low is None or low < 0:
        magnitude_low = 1 if high is None or high >= 0 else -high
        magnitude_high = None if low is None else -low
        if magnitude_high is None or magnitude_low <= magnitude_high:
            alts.append(f'"-" {_unsigned(magnitude_low, magnitude_high)}')
    if high is None or high >= 0:
        start = 0 if low is None or low < 0 else low
        if high is None or start <= high:
            alts.append(_unsigned(start, high))
    if not alts:
        raise ValueError(f"no integer lies between {low} and {high}")
    return " | ".join(alts)


def number_range(low: Bound | None, high: Bound | None) -> str:
    """JSON numbers (no exponent) within whole-number bounds."""
    alts: list[str] = []
    if high is None or high[0] > 0 or (high[0] == 0 and not high[1]):
        start: Bound = (0, False) if low is None or low[0] < 0 else low
        alts.extend(_magnitude(start, high))
    if low is None or low[0] < 0:
        magnitude_high = None if low is None else (-low[0], low[1])
        magnitude_low = (0, True) if high is None or high[0] >= 0 else (-high[0], high[1])
        alts.extend(f'"-" {alt}' for alt in _magnitude(magnitude_low, magnitude_high))
    if not alts:
        raise ValueError(f"no number lies within the bounds {low} .. {high}")
    return " | ".join(alts)


def _magnitude(low: Bound, high: Bound | None) -> list[str]:
    """Non-negative decimals ``x`` within the bounds (``low[0] >= 0``)."""
    lo, lo_strict = low
    hi = None if high is None else high[0]
    alts: list[str] = []
    inner_high = None if hi is None else hi - 1
    if inner_high is None or lo + 1 <= inner_high:
        alts.append(f"{_unsigned(lo + 1, inner_high)} {_FRACTION}?")
    if hi is None or lo < hi:
        alts.append(f'"{lo}" {_NONZERO_FRACTION if lo_strict else _FRACTION + "?"}')
        if high is not None and not high[1]:
            alts.append(f'"{hi}" {_ZERO_FRACTION}?')
    elif lo == hi and not lo_strict and high is not None and not high[1]:
        alts.append(f'"{lo}" {_ZERO_FRACTION}?')
    return alts


def _unsigned(low: int, high: int | None) -> str:
    """Decimal integers (no leading zeros) from ``low`` to ``high`` (``0 <= low``)."""
    alts: list[str] = []
    top = MAX_DIGITS if high is None else len(str(high))
    for width in range(len(str(low)), top + 1):
        first = 10 ** (width - 1) if width > 1 else 0
        width_low = max(low, first)
        width_high = 10**width - 1 if high is None else min(high, 10**width - 1)
        if width_low > width_high:
            continue
        if high is None and width_low == first and width > 1:
            alts.append(f"[1-9] [0-9]{{{width - 1},{MAX_DIGITS - 1}}}")  # and every wider one
            break
        alts.append(_same_width(str(width_low), str(width_high)))
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _same_width(low: str, high: str) -> str:
    """Digit strings as long as ``low`` and ``high`` that sort between them."""
    n = len(low)
    if low == high:
        return f'"{low}"'
    if n == 1:
        return f"[{low}-{high}]"
    if low == "0" * n and high == "9" * n:
        return f"[0-9]{{{n}}}"
    a, b = int(low[0]), int(high[0])
    if a == b:
        return f'"{a}" {_same_width(low[1:], high[1:])}'
    parts = [f'"{a}" {_same_width(low[1:], "9" * (n - 1))}']
    if b - a > 1:
        middle = f"[{a + 1}-{b - 1}]" if b - a > 2 else f'"{a + 1}"'
        parts.append(f"{middle} [0-9]{{{n - 1}}}")
    parts.append(f'"{b}" {_same_width("0" * (n - 1), high[1:])}')
    return "(" + " | ".join(parts) + ")"
