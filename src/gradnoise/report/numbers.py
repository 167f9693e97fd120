"""The report's one number formatter: every number a reader sees goes through :func:`fmt_num`.

Rules (tested in ``tests/test_report_text.py``):

* ``None``, NaN and non-numbers that mean "missing" print as ``n/a``; +-inf as ``inf``/``-inf``.
* integers print exactly, with thousands separators (``1,810``, ``-12,000``).
* floats print with ``digits`` significant digits (default 4), trailing zeros dropped:
  ``0.4718``, ``1.581``, ``2.3``, with thousands separators from 1,000 (``12,350``). Magnitudes below 0.001 (or from 1e15 up) use scientific
  notation with the same significant digits: ``1.412e-4``.
* ``unit`` is appended after a space (``"1.23 s"``, ``"4,096 B"``); ``unit="%"`` multiplies a
  fraction by 100 and appends ``%`` without a space (``0.321 -> "32.1%"``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

NA = "n/a"


def _float(value: float, digits: int) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    # rounding may carry into the next decade (9.9996 -> 10.00): decide after rounding
    rounded = float(f"{value:.{digits - 1}e}")
    if rounded != 0:
        exponent = math.floor(math.log10(abs(rounded)))
    if exponent < -3 or exponent >= 15:
        mantissa, exp = f"{rounded:.{digits - 1}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exp)}"
    decimals = max(0, digits - 1 - exponent)
    text = f"{rounded:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_num(value: Any, unit: str = "", *, digits: int = 4) -> str:
    """``value`` as the report prints numbers (see the module docstring); strings pass through."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if unit == "%" and isinstance(value, Real):
        return f"{fmt_num(float(value) * 100, digits=digits)}%" if math.isfinite(value) else NA
    if isinstance(value, Integral):
        text = f"{int(value):,}"
    elif isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return NA
        if math.isinf(v):
            text = "inf" if v > 0 else "-inf"
        else:
            text = _float(v, digits)
    else:
        return str(value)
    return f"{text} {unit}" if unit else text


def fmt_cell(value: Any) -> str:
    """A table cell: numbers through :func:`fmt_num`, sequences of numbers element-wise."""
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_cell(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy scalar
        value = value.item()
    return fmt_num(value)
