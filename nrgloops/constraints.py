"""Constraints: a soft power cap (W over a window) or an energy budget (J).

The window of a ``PowerCap`` is how long the power is averaged before it is
compared with the cap.  It comes from the sensor's granularity: a counter
that moves every ``resolution_s`` seconds gives a windowed average with an
error of about ``resolution_s / window``, so the default window is ten
counter updates, and never under 0.1 s::

    RAPL (msr, powercap, perf)   1 ms updates    -> 0.1 s window
    model meter                  10 ms ticks     -> 0.1 s window
    NVML (GPU)                   100 ms updates  -> 1 s window

A window shorter than three counter updates is noise: it is widened to that,
with a warning.

The amount may change while a loop runs: ``cap.watts = 25`` (from any
thread: one float is replaced, atomically under the GIL) takes effect at
the loop's next tick, a few milliseconds later; so does
``budget.joules = 800``.  What a running loop cannot change -- the window
its sampler averages over, the meter it reads, the domain -- refuses
assignment with an AttributeError saying so: make a new constraint instead.
"""

from __future__ import annotations

import warnings
from typing import Any

from nrgloops import _forksafe
from nrgloops._attributes import fixed
from nrgloops._checks import number
from nrgloops.meters import Meter, open_meter

__all__ = ["EnergyBudget", "PowerCap", "check_domain", "default_window", "shared_meter"]

MIN_DEFAULT_WINDOW_S = 0.1

# One meter per kind string, so that PowerCap(45) and EnergyBudget(100) made
# with the same meter="auto" share one meter and so one sampler thread.
_shared: dict[str, Meter] = {}
_shared_lock = _forksafe.lock()


def shared_meter(meter: str | Meter) -> Meter:
    if isinstance(meter, Meter):
        return meter
    if not isinstance(meter, str):
        raise TypeError(f"meter must be a kind string or a Meter, not {type(meter).__name__}")
    with _shared_lock:
        found = _shared.get(meter)
        if found is None:
            found = _shared[meter] = open_meter(meter)
        return found


def _amount(name: str, value: Any, unit: str) -> float:
    return number(name, value, unit, lo=0.0, lo_open=True)


def check_domain(meter: Meter, domain: str | None) -> str | None:
    meter.domain_index(domain)  # raises naming the meter's domains
    return domain


def default_window(meter: Meter) -> float:
    """The default averaging window for ``meter``, s: ten counter updates, at least 0.1 s."""
    return max(MIN_DEFAULT_WINDOW_S, 10.0 * meter.resolution_s)


class PowerCap:
    """A soft power cap: keep the power, averaged over ``window`` seconds, at or under ``watts``.

    Args:
        watts: the cap, W (finite, > 0).  Assignable at run time: a running
            loop follows the new value from its next tick.
        window: the averaging window, s (> 0).  Default: ten updates of the
            meter's counter, at least 0.1 s (0.1 s for RAPL, 1 s for NVML).
            A window under three counter updates is widened, with a warning.
        meter: a kind ("auto", "msr", "powercap", "perf", "model", "nvml",
            "pyrapl") or a Meter.  The same kind string gives the same meter.
        domain: one domain of the meter (e.g. "package-0"), or None for its total.
    """

    # (no other attribute: a typo such as ``cap.wats = 5`` raises)
    __slots__ = ("_watts", "_window", "_meter", "_domain", "__weakref__")
    window = fixed("the sampler of a running loop averages over it")
    meter = fixed("a running loop's sampler reads it")
    domain = fixed("a running loop's sampler reads its column")

    def __init__(
        self,
        watts: float,
        window: float | None = None,
        meter: str | Meter = "auto",
        domain: str | None = None,
    ) -> None:
        self.watts = watts  # (the setter checks it)
        if window is not None:
            window = _amount("window", window, "seconds")
        self._meter = shared_meter(meter)
        self._domain = check_domain(self._meter, domain)
        least = 3.0 * self.meter.resolution_s
        if window is None:
            window = default_window(self.meter)
        elif window < least * (1 - 1e-9):  # 3 x 0.1 is 0.30000000000000004
            warnings.warn(
                f"PowerCap window={window:g} s is shorter than 3 updates of the "
                f"{self.meter.kind} meter's counter ({self.meter.resolution_s:g} s each): "
                f"widened to {least:g} s",
                stacklevel=2,
            )
            window = least
        self._window = window

    @property
    def watts(self) -> float:
        """The cap, W.  Assign to change it at run time (from any thread)."""
        return self._watts

    @watts.setter
    def watts(self, value: float) -> None:
        self._watts = _amount("watts", value, "watts")

    def __repr__(self) -> str:
        where = f" {self.domain}" if self.domain else ""
        return (
            f"PowerCap({self.watts:g} W over {self.window:g} s, "
            f"{self.meter.kind}{where}, {self.meter.label})"
        )


class EnergyBudget:
    """An energy budget: stop once ``joules`` have been used since the loop started.

    Args:
        joules: the budget, J (finite, > 0).
        meter: a kind string or a Meter, as for PowerCap.
        domain: one domain of the meter, or None for its total.

    ``window`` (s) is the window used for the power figures of reports.
    ``joules`` may be assigned at run time: a running ``truncate`` loop
    stops at the new budget (counted from its start) from its next check.
    """

    __slots__ = ("_joules", "_window", "_meter", "_domain", "__weakref__")
    window = fixed("it is the meter's default window, which the reports use")
    meter = fixed("a running loop's sampler reads it")
    domain = fixed("a running loop's sampler reads its column")

    def __init__(
        self, joules: float, meter: str | Meter = "auto", domain: str | None = None
    ) -> None:
        self.joules = joules  # (the setter checks it)
        self._meter = shared_meter(meter)
        self._domain = check_domain(self._meter, domain)
        self._window = default_window(self._meter)

    @property
    def joules(self) -> float:
        """The budget, J.  Assign to change it at run time (from any thread)."""
        return self._joules

    @joules.setter
    def joules(self, value: float) -> None:
        self._joules = _amount("joules", value, "joules")

    def __repr__(self) -> str:
        where = f" {self.domain}" if self.domain else ""
        return f"EnergyBudget({self.joules:g} J, {self.meter.kind}{where}, {self.meter.label})"
