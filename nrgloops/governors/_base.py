"""What every governor is: ``run(cap_w, workload, power)`` returning its trace."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nrgloops import _checks
from nrgloops._errors import NrgError

__all__ = ["Governor", "GovernorBusy", "GovernorUnavailable", "Trace", "check_cap", "check_power"]

T = TypeVar("T")


class GovernorUnavailable(NrgError):
    """A governor cannot be used here; the message says why and what to do."""


class GovernorBusy(GovernorUnavailable):
    """Another governed run (in this process or another) owns a limit this
    run would change: one owner per limit, so that each restores the value
    that was there before either."""


@dataclass
class Trace(Generic[T]):
    """What a governed run did: the workload's ``result``, and at each control
    step the time (monotonic s), the power (W, from the ``power`` callable;
    NaN where it said nothing) and the governor's setting then.

    ``setting`` names the setting and its unit: ``"quota_cpus"`` (the cgroup
    governor's CPU quota) or ``"limit_w"`` (the sum of the PL1 limits).
    """

    result: T
    setting: str
    times: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    settings: list[float] = field(default_factory=list)

    def mean_setting(self) -> float | None:
        """The setting averaged over the control steps (None without steps)."""
        return sum(self.settings) / len(self.settings) if self.settings else None


class Governor:
    """A system-level cap on a whole workload, applied from outside it.

    Subclasses set ``name`` and implement ``run``; ``check`` and
    ``cap_range`` say up front whether and for which caps it can run here.
    """

    name = "none"

    @property
    def description(self) -> str:
        return self.name

    def check(self) -> None:
        """Raise GovernorUnavailable (why, and how to fix it) if it cannot run here."""

    def cap_range(self) -> tuple[float, float]:
        """The least and the greatest cap, W, this governor can set here."""
        return (0.0, math.inf)

    def with_model(self, *, idle_w: float, watts_per_cpu: float) -> Governor:
        """A governor like this one given a power model (idle power, W, and W per
        busy CPU), built by its constructor; one without a model returns itself."""
        return self

    def run(
        self,
        cap_w: float,
        workload: Callable[[], T],
        power: Callable[[], float] | None = None,
    ) -> Trace[T]:
        """Run ``workload`` under a cap of ``cap_w`` watts and return its trace
        (its result in ``.result``).  ``power`` returns the recent power, W (a
        sampler's ``power(window)``).  The system is as before when this
        returns or raises."""
        raise NotImplementedError


def check_power(power: Any, required: bool, who: str) -> Callable[[], float] | None:
    """``power`` as given: a callable returning watts (or None where not ``required``)."""
    if power is None and not required:
        return None
    if not callable(power):
        raise TypeError(
            f"power must be a callable returning watts (e.g. lambda: sampler.power(window))"
            f"{'' if not required else f', which the {who} needs'}, "
            f"not {type(power).__name__}"
        )
    return power  # type: ignore[no-any-return]


def check_cap(cap_w: Any) -> float:
    """A cap: a finite number of watts > 0."""
    return _checks.number("cap_w", cap_w, "watts", lo=0.0, lo_open=True)
