"""Carbon budgets: grams of CO2-equivalent that a truncated loop may emit.

Emissions are energy times the grid's carbon intensity (gCO2eq per kWh).
The intensity is the user's figure -- nrgloops fetches nothing -- given as a
constant, a time series (say a forecast from the grid operator or Electricity
Maps, fetched by the application), or a callable of time; with its source and
whether it is an *average* intensity (the grid mix: attributional reporting)
or a *marginal* one (the plant that answers a change of demand: what a
decision to run now changes).  Reports carry both, and the gCO2eq are
labelled like the energy they come from (estimated when it is).

    budget = CarbonBudget(5.0, intensity=380.0, source="grid mix, annual", kind="average")
    for x in truncate(items, budget):
        work(x)
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Callable, Sequence
from typing import Any

from nrgloops import _checks
from nrgloops._attributes import fixed
from nrgloops.constraints import check_domain, default_window, shared_meter
from nrgloops.meters import Meter

__all__ = ["INTENSITY_KINDS", "J_PER_KWH", "CarbonBudget", "CarbonIntensity"]

J_PER_KWH = 3.6e6
INTENSITY_KINDS = ("average", "marginal")

IntensityLike = float | Sequence[tuple[float | datetime.datetime, float]] | Callable[[float], float]


def _grams_per_kwh(name: str, value: Any) -> float:
    return _checks.number(name, value, "gCO2eq/kWh", lo=0.0)


def _unix(name: str, t: Any) -> float:
    if isinstance(t, datetime.datetime):
        if t.tzinfo is None:
            raise ValueError(
                f"{name} must be a timezone-aware datetime (or Unix seconds), got a naive {t!r}"
            )
        return t.timestamp()
    return _checks.number(name, t, "seconds (Unix time)")


class CarbonIntensity:
    """The grid's carbon intensity over time, gCO2eq/kWh.

    Args:
        value: a constant (g/kWh >= 0); or a time series of ``(time, g/kWh)``
            pairs in time order, ``time`` in Unix seconds (``time.time()``)
            or an aware datetime, each value holding until the next (before
            the first point, the first value); or a callable taking Unix
            seconds and returning g/kWh.
        source: where the figure comes from (said in every report).
        kind: "average" (the grid mix) or "marginal" (the plant that answers
            a change of demand).
    """

    def __init__(self, value: IntensityLike, source: str = "", kind: str = "average") -> None:
        if not isinstance(source, str):
            raise TypeError(f"source must be a str, not {type(source).__name__}")
        if kind not in INTENSITY_KINDS:
            raise ValueError(f"kind must be 'average' or 'marginal', got {kind!r}")
        self.kind = kind
        self._const: float | None = None
        self._fn: Callable[[float], float] | None = None
        self._times: list[float] = []
        self._values: list[float] = []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._const = _grams_per_kwh("intensity", value)
            what = f"constant {self._const:g} g/kWh"
        elif callable(value):
            self._fn = value
            what = f"a function of time ({getattr(value, '__qualname__', repr(value))})"
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if not value:
                raise ValueError("intensity must have at least one (time, g/kWh) point")
            for i, point in enumerate(value):
                if not isinstance(point, Sequence) or len(point) != 2:
                    raise TypeError(f"intensity[{i}] must be a (time, g/kWh) pair, got {point!r}")
                t = _unix(f"intensity[{i}] time", point[0])
                if self._times and t <= self._times[-1]:
                    raise ValueError(f"intensity[{i}]: the times must increase, got {point[0]!r}")
                self._times.append(t)
                self._values.append(_grams_per_kwh(f"intensity[{i}] value", point[1]))
            what = f"a time series of {len(self._times)} points"
        else:
            raise TypeError(
                "intensity must be a number of gCO2eq/kWh, a sequence of (time, g/kWh) pairs "
                f"or a callable of time, not {type(value).__name__}"
            )
        self.source = source or what

    def at(self, t: float) -> float:
        """The intensity at Unix time ``t``, gCO2eq/kWh."""
        if self._const is not None:
            return self._const
        if self._fn is not None:
            v = self._fn(t)
            try:
                return _grams_per_kwh("intensity", v)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{exc} (the intensity callable, at t={t:.3f})") from None
        i = bisect.bisect_right(self._times, t) - 1
        return self._values[max(0, i)]

    def __repr__(self) -> str:
        return f"CarbonIntensity({self.source}, {self.kind})"


class CarbonBudget:
    """A carbon budget: stop once ``grams`` of CO2eq have been emitted since
    the loop started, at the grid's intensity (``truncate`` holds it).

    Args:
        grams: the budget, gCO2eq (finite, > 0).
        intensity: a CarbonIntensity, or what it takes (a constant g/kWh, a
            time series, a callable of Unix time).
        source, kind: the intensity's source and "average" / "marginal"
            (when ``intensity`` is not already a CarbonIntensity).
        meter, domain: as for EnergyBudget.

    Each stretch of energy is charged at the intensity when it is counted:
    the loop counts at least every tick (a few ms) and at every item near
    the end of the budget.  ``grams`` may be assigned at run time, as an
    EnergyBudget's ``joules``.
    """

    __slots__ = ("_grams", "_intensity", "_window", "_meter", "_domain", "__weakref__")
    window = fixed("it is the meter's default window, which the reports use")
    meter = fixed("a running loop's sampler reads it")
    domain = fixed("a running loop's sampler reads its column")

    def __init__(
        self,
        grams: float,
        intensity: CarbonIntensity | IntensityLike,
        *,
        source: str = "",
        kind: str = "average",
        meter: str | Meter = "auto",
        domain: str | None = None,
    ) -> None:
        self.grams = grams  # (the setter checks it)
        if not isinstance(intensity, CarbonIntensity):
            intensity = CarbonIntensity(intensity, source=source, kind=kind)
        self.intensity = intensity
        self._meter = shared_meter(meter)
        self._domain = check_domain(self._meter, domain)
        self._window = default_window(self._meter)

    @property
    def grams(self) -> float:
        """The budget, gCO2eq.  Assign to change it at run time."""
        return self._grams

    @grams.setter
    def grams(self, value: float) -> None:
        self._grams = _checks.number("grams", value, "grams of CO2eq", lo=0.0, lo_open=True)

    @property
    def intensity(self) -> CarbonIntensity:
        """The grid's intensity.  Assign a CarbonIntensity to change it at run
        time (a running loop charges the energy from then on at it)."""
        return self._intensity

    @intensity.setter
    def intensity(self, value: CarbonIntensity) -> None:
        if not isinstance(value, CarbonIntensity):
            raise TypeError(
                "intensity must be a nrgloops.CarbonIntensity (wrap a number, series or "
                f"callable in one), not {type(value).__name__}"
            )
        self._intensity = value

    def __repr__(self) -> str:
        where = f" {self.domain}" if self.domain else ""
        return (
            f"CarbonBudget({self.grams:g} gCO2eq at {self.intensity.source}, "
            f"{self.intensity.kind}; {self.meter.kind}{where}, {self.meter.label})"
        )
