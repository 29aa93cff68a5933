"""Meters: one module per energy source, and ``open_meter`` to pick one.

``open_meter("auto")`` tries msr, then powercap, then perf, and falls back to
the model meter, which *estimates*; the first time it falls back it logs one
short line, and the meter's ``fallback_reason`` (shown by ``nrgloops info``)
says which sources were refused and why.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from nrgloops._errors import NrgError
from nrgloops.meters._base import Meter, Reading

__all__ = ["KINDS", "Meter", "Reading", "open_meter"]

log = logging.getLogger("nrgloops")

# kind -> (module, opener).  Imported lazily: a kind's optional dependency
# (nvidia-ml-py, pyRAPL) is only needed when that kind is asked for.
_OPENERS: dict[str, tuple[str, str]] = {
    "msr": ("nrgloops.meters.msr", "open_msr"),
    "powercap": ("nrgloops.meters.powercap", "open_powercap"),
    "perf": ("nrgloops.meters.perf", "open_perf"),
    "model": ("nrgloops.meters.model", "open_model"),
    "nvml": ("nrgloops.meters.nvml", "open_nvml"),
    "pyrapl": ("nrgloops.meters.pyrapl", "open_pyrapl"),
}
KINDS = ("auto", *_OPENERS)
_AUTO_ORDER = ("msr", "powercap", "perf")
_fallback_logged = False


def _opener(kind: str) -> Callable[..., Meter]:
    module, name = _OPENERS[kind]
    opener: Callable[..., Meter] = getattr(importlib.import_module(module), name)
    return opener


def _open_auto(**options: Any) -> Meter:
    global _fallback_logged
    refused = []
    for kind in _AUTO_ORDER:
        try:
            return _opener(kind)()
        except NrgError as exc:  # MeterUnavailable, or a source that reads nonsense
            refused.append(f"{kind}: {exc}")
    meter = _opener("model")(**options)
    meter.fallback_reason = "no energy counter here (" + "; ".join(refused) + ")"
    if not _fallback_logged:
        _fallback_logged = True
        log.warning(
            "nrgloops: no energy counter readable here: power is ESTIMATED by the model meter "
            "(`nrgloops info` says why)"
        )
    return meter


def open_meter(kind: str | Meter = "auto", **options: Any) -> Meter:
    """Open an energy meter.

    Args:
        kind: "auto" (the best that works here: msr, powercap, perf, else the
            model), or one of "msr", "powercap", "perf", "model", "nvml",
            "pyrapl".  A Meter is returned as it is.
        **options: passed to the kind's opener, e.g. ``root=``, ``cpus=``,
            ``vendor=`` for msr, ``root=`` for powercap, ``index=`` for nvml,
            ``idle_watts=`` / ``watts_per_core=`` for the model (and for
            "auto", where they apply if it falls back to the model).

    Raises:
        MeterUnavailable: the source cannot be read here; the message names the
            path and the fix.
        ValueError / TypeError: an unknown kind or a bad option.
    """
    if isinstance(kind, Meter):
        return kind
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str or a Meter, not {type(kind).__name__}")
    if kind == "auto":
        return _open_auto(**options)
    if kind not in _OPENERS:
        raise ValueError(f"unknown meter kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _opener(kind)(**options)
