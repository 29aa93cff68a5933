"""Argument checks: the one place a value from a user is checked.

Each check names the argument, says what it must be and what it got, and
raises TypeError (wrong kind of value) or ValueError (right kind, out of
range) -- never OverflowError, MemoryError or anything else.  A value is
checked once, where it enters the library; code past that point trusts it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["boolean", "choice", "count", "hashable", "number", "numbers", "path"]


def number(
    name: str,
    value: Any,
    unit: str = "",
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number in the range [lo, hi] (ends open where asked), as a float.

    ``unit`` words the message ("watts", "seconds"); bools are refused, and
    an int too large for a float is a ValueError, not an OverflowError.
    """
    what = f"a number of {unit}" if unit else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(
            f"{name} must be {_range(what, lo, hi, lo_open, hi_open)}, got a huge int"
        ) from None
    bad = not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        raise ValueError(f"{name} must be {_range(what, lo, hi, lo_open, hi_open)}, got {value!r}")
    return v


def _range(what: str, lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    text = "a finite " + what[2:] if what.startswith("a ") else what
    if lo > -math.inf and hi < math.inf:
        return f"{text} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo > -math.inf:
        return f"{text} {'>' if lo_open else '>='} {lo:g}"
    if hi < math.inf:
        return f"{text} {'<' if hi_open else '<='} {hi:g}"
    return text


def count(name: str, value: Any, *, lo: int = 0, hi: int | None = None, what: str = "") -> int:
    """An int (not a bool) in [lo, hi]."""
    label = what or "an integer"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {label}, not {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        limit = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {label} {limit}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    """True or False, nothing else (0/1 and "no" are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def path(name: str, value: Any) -> str:
    """A filesystem path: a str or an os.PathLike (pathlib.Path), as a str.

    Ints are refused: ``open(1)`` would take file descriptor 1 (stdout).
    """
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bool):
        p = os.fspath(value)
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if not p:
            raise ValueError(f"{name} must be a non-empty path")
        if "\0" in p:
            raise ValueError(f"{name} must be a path without NUL characters, got {p!r}")
        return p
    raise TypeError(f"{name} must be a path (str or pathlib.Path), not {type(value).__name__}")


def hashable(name: str, value: Any) -> Hashable:
    """A value usable as a dict key (a window, a domain name)."""
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{name} must be hashable, not {type(value).__name__}") from None
    return value  # type: ignore[no-any-return]


def numbers(
    name: str,
    values: Any,
    unit: str = "",
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
    distinct: bool = False,
) -> list[float]:
    """A non-empty list (or tuple) of numbers, each checked as ``number`` does
    (the message names the entry: ``caps[1]``); with ``distinct``, no value twice."""
    what = f"numbers of {unit}" if unit else "numbers"
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list of {what}, not {type(values).__name__}")
    if not values:
        raise ValueError(f"{name} must list at least one of the {what}, got none")
    out = [
        number(f"{name}[{i}]", v, unit, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
        for i, v in enumerate(values)
    ]
    if distinct:
        twice = sorted({v for v in out if out.count(v) > 1})
        if twice:
            shown = ", ".join(f"{v:g}" for v in twice)
            raise ValueError(f"{name} must not repeat a value: {shown} given more than once")
    return out


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """One of the str ``choices`` (a kind, a policy), nothing else."""
    listed = ", ".join(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {listed} (a str), not {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value
