"""The model meter: *estimated* package power from CPU time, for machines with
no energy counter (VMs, containers, CI).

    power = idle_watts + watts_per_core * busy cores

Where the defaults come from: a busy core of a current x86 part draws roughly
its share of the package's TDP (65 W / 8 cores for a desktop part, 270 W / 40
cores for a Xeon 8380: 7-8 W), hence ``watts_per_core = 8``; an idle package
of a small machine draws a few watts, hence ``idle_watts = 5``.  Such a model
holds poorly outside what it was fit on (docs/hardware.md): set your own with
the arguments or NRGLOOPS_MODEL_IDLE_W / NRGLOOPS_MODEL_W_PER_CORE.  Numbers
from this meter are always labelled "estimated".
"""

from __future__ import annotations

import os

from nrgloops import _checks
from nrgloops._ffi import lib, new_handle
from nrgloops.meters._base import Meter

__all__ = ["DEFAULT_IDLE_W", "DEFAULT_W_PER_CORE", "open_model"]

DEFAULT_IDLE_W = 5.0
DEFAULT_W_PER_CORE = 8.0
_SCOPES = {"system": lib.NRG_MODEL_SYSTEM, "process": lib.NRG_MODEL_PROCESS}


def _coefficient(value: float | None, env: str, default: float, name: str) -> float:
    if value is None:
        raw = os.environ.get(env)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} is not a number of watts") from None
        name = env
    return _checks.number(name, value, "watts", lo=0.0)


def open_model(
    idle_watts: float | None = None,
    watts_per_core: float | None = None,
    scope: str = "system",
    stat_path: str | os.PathLike[str] = "/proc/stat",
) -> Meter:
    """Open the model meter.

    Args:
        idle_watts: package power with no busy core, W (default 5, or
            NRGLOOPS_MODEL_IDLE_W).
        watts_per_core: added power per fully busy core, W (default 8, or
            NRGLOOPS_MODEL_W_PER_CORE).
        scope: "system" counts every process's CPU time (/proc/stat, 10 ms
            ticks), as a package counter would; "process" only this
            process's (nanosecond resolution).
        stat_path: where /proc/stat is (for tests).
    """
    idle = _coefficient(idle_watts, "NRGLOOPS_MODEL_IDLE_W", DEFAULT_IDLE_W, "idle_watts")
    per_core = _coefficient(
        watts_per_core, "NRGLOOPS_MODEL_W_PER_CORE", DEFAULT_W_PER_CORE, "watts_per_core"
    )
    if not isinstance(scope, str) or scope not in _SCOPES:
        raise ValueError(f"scope must be one of {sorted(_SCOPES)}, got {scope!r}")
    stat_path = _checks.path("stat_path", stat_path)
    source = new_handle(
        lib.nrg_model_new,
        _SCOPES[scope],
        os.fsencode(stat_path),
        idle,
        per_core,
        what=f"model meter: opening {stat_path}",
    )
    resolution = 0.01 if scope == "system" else 0.001
    return Meter(
        source,
        kind="model",
        measured=False,
        domains=("package-0",),
        resolution_s=resolution,
        default_period=resolution,
        description=(
            f"estimated from {scope} CPU time: {idle:g} W idle + {per_core:g} W per busy core"
        ),
    )
