"""Checks of setting values shared by :class:`StudyConfig` and every analysis's options.

Each check returns the value normalised (``int``, ``float``, ...) or raises a
:class:`~gradnoise.errors.ConfigError` whose message names the setting, says what it accepts and
what it got. ``where`` prefixes the setting's name: ``""`` for a study field, ``"[options.tails]"``
for an analysis option. No torch here (the CLI validates a configuration before importing it).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError

INT64_MAX = 2**63 - 1


def _name(where: str, key: str) -> str:
    return f"{where} {key}" if where else key


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def check_keys(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse keys of ``given`` outside ``known``, suggesting the closest known key."""
    known = sorted(known)
    unknown = sorted(str(k) for k in set(given) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"{where + ': ' if where else ''}unknown setting(s) {', '.join(hints)}; "
        f"known: {', '.join(known) if known else '(none: this takes no settings)'}"
    )


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``numpy`` integers included)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(
    where: str, key: str, value: Any, minimum: int | None = None, maximum: int = INT64_MAX
) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``."""
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum == INT64_MAX else f" and <= {maximum:,}"
    if not is_int(value):
        raise ConfigError(f"{_name(where, key)} must be an integer{lo}{hi}, {_got(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or value > maximum:
        raise ConfigError(f"{_name(where, key)} must be an integer{lo}{hi}, got {value}")
    return value


def number(
    where: str,
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in the interval given by ``low``/``high``."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    span = ""
    if low is not None and high is not None:
        span = f" in {left}{low}, {high}{right}"
    elif low is not None:
        span = f" {'>' if low_open else '>='} {low}"
    elif high is not None:
        span = f" {'<' if high_open else '<='} {high}"
    what = f"{_name(where, key)} must be a finite number{span}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what}, {_got(value)}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        raise ConfigError(f"{what}, got {value}")
    return value


def boolean(where: str, key: str, value: Any) -> bool:
    """``value``, which must be ``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{_name(where, key)} must be true or false, {_got(value)}")
    return value


def choice(where: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, which must be one of ``choices``."""
    if isinstance(value, (list, dict)) or value not in choices:
        raise ConfigError(
            f"{_name(where, key)} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def sequence(where: str, key: str, value: Any) -> list[Any]:
    """``value`` as a list (a TOML array); a string or a table is refused."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"{_name(where, key)} must be a list, {_got(value)}")
    return list(value)


def int_list(where: str, key: str, value: Any, minimum: int) -> list[int]:
    """``value`` as a list of integers ``>= minimum``."""
    return [
        integer(where, f"{key}[{i}]", v, minimum) for i, v in enumerate(sequence(where, key, value))
    ]


def table(where: str, key: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict with string keys (a TOML table)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            f"{_name(where, key)} must be a table of named settings ({{name = value}}), "
            f"{_got(value)}"
        )
    return dict(value)
