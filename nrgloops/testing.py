"""Test helpers for code that uses nrgloops (after trio.testing).

``FakeMeter`` is a meter whose power you set; its energy is integrated over
real time by the same C source and sampler path the real meters use, so a
closed loop can be driven deterministically without hardware.

``SimulatedPlant`` is a workload whose power depends on the knob level it
runs at (any function of the level, a lag, noise, phases); it drives a
FakeMeter in real time, or runs on a ``FakeClock`` in simulated time, where
``plant.drive(knob, cap, seconds)`` runs a knob's control loop faster than
real time and independently of the machine's load.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from nrgloops._checks import boolean, count, number
from nrgloops._errors import NrgError
from nrgloops._ffi import check, lib, new_handle
from nrgloops.control import Knob
from nrgloops.meters._base import Meter

__all__ = ["FakeClock", "FakeMeter", "Sample", "SimulatedPlant"]


class FakeMeter(Meter):
    """A one-domain ("package-0") meter whose power the caller sets.

    >>> f = FakeMeter(watts=40.0)
    >>> f.watts = 80.0      # from now on the energy grows at 80 W

    ``measured`` is True so that code paths for real counters are exercised;
    pass ``measured=False`` to exercise the estimated ones.
    """

    def __init__(self, watts: float = 0.0, *, measured: bool = True) -> None:
        w = number("watts", watts, "watts", lo=0.0)
        super().__init__(
            new_handle(lib.nrg_fake_new, w, what="fake meter"),
            kind="fake",
            measured=boolean("measured", measured),
            domains=("package-0",),
            resolution_s=0.001,
            default_period=0.001,
            description="a fake meter whose power the test sets",
        )
        self._watts = w

    @property
    def watts(self) -> float:
        """The power now, W."""
        return self._watts

    @watts.setter
    def watts(self, value: float) -> None:
        w = number("watts", value, "watts", lo=0.0)
        check(lib.nrg_fake_set_watts(self._source, w), "setting the fake meter's power")
        self._watts = w


class FakeClock:
    """A clock that moves only when told to: ``clock()`` is the time, s.

    >>> clock = FakeClock()
    >>> clock.advance(0.5); clock()
    0.5

    A ``SimulatedPlant`` on a FakeClock spends no real time, so controller
    tests run faster than real time and do not depend on the machine's load.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = number("start", start, "seconds")

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The time, s."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds`` (>= 0)."""
        self._now += number("seconds", seconds, "seconds", lo=0.0)

    sleep = advance


PowerPerLevel = Callable[[float], float] | Sequence[float]


class SimulatedPlant:
    """A workload whose power depends on the knob level it runs at.

    >>> plant = SimulatedPlant(lambda threads: 8.0 + 3.0 * threads, noise=0.05)
    >>> knob = Knob(2, 16, 2)
    >>> with nrg_adapt(PowerCap(41, meter=plant.meter), knob=knob) as loop:
    ...     while plant.work < 1e4:
    ...         loop.step()
    ...         plant.iterate(knob.value)   # one 1 ms iteration at that level

    Each ``iterate(level)`` is one iteration: it draws ``power(level)`` W
    (times the phase's factor, the noise, through the lag) for
    ``iteration_s`` seconds and adds ``work(level)`` to ``work``.

    In real time (no ``clock``) it sets ``meter.watts`` (a ``FakeMeter``: give
    one, or one is made) and sleeps ``iteration_s``: the loops under test
    see the power through the real sampler.  On a ``FakeClock`` it moves the
    clock instead and integrates the energy itself (``energy_j``,
    ``windowed(window)``), and ``drive(knob, cap, seconds)`` runs a knob's
    control loop in simulated time exactly as the loops do at their ticks.

    Args:
        power: power per level, W: a function of the level, or a sequence
            indexed by grid index ``round((level - lo) / step)``.
        lo, step: the grid of a sequence ``power`` (default 0, 1).
        iteration_s: the duration of one iteration, s (> 0).
        lag_s: first-order lag of the power behind the level, s (>= 0).
        noise: relative noise of the power, uniform in [-noise, +noise]
            (in [0, 1)), drawn anew every ``noise_s`` s (default: every iteration).
        phases: ``(at_s, factor)`` pairs: from ``at_s`` seconds after the
            plant's start on, the power per level is ``factor`` times
            ``power`` (e.g. ``[(30.0, 1.3)]``); increasing times, factors > 0.
        work: work per iteration at a level (default: the level itself).
        seed: the noise's seed (deterministic).
        clock: a FakeClock, or None for real time.
        meter: the FakeMeter to drive (real time; default a new one).
    """

    def __init__(
        self,
        power: PowerPerLevel,
        *,
        lo: float = 0.0,
        step: float = 1.0,
        iteration_s: float = 0.001,
        lag_s: float = 0.0,
        noise: float = 0.0,
        noise_s: float | None = None,
        phases: Sequence[tuple[float, float]] = (),
        work: Callable[[float], float] | None = None,
        seed: int = 0,
        clock: FakeClock | None = None,
        meter: FakeMeter | None = None,
    ) -> None:
        if callable(power):
            self._table: list[float] | None = None
            self._power: Callable[[float], float] = power
        elif isinstance(power, Sequence) and not isinstance(power, (str, bytes)) and power:
            self._table = [number(f"power[{i}]", w, "watts", lo=0.0) for i, w in enumerate(power)]
            self._power = self._from_table
        else:
            raise TypeError(
                "power must be a function of the level or a non-empty sequence of watts "
                f"per grid level, not {type(power).__name__}"
            )
        self.lo = number("lo", lo)
        self.step = number("step", step, lo=0.0, lo_open=True)
        self.iteration_s = number("iteration_s", iteration_s, "seconds", lo=0.0, lo_open=True)
        self.lag_s = number("lag_s", lag_s, "seconds", lo=0.0)
        self.noise = number("noise", noise, "a fraction", lo=0.0, hi=1.0, hi_open=True)
        self.noise_s = self.iteration_s
        if noise_s is not None:
            self.noise_s = number("noise_s", noise_s, "seconds", lo=0.0, lo_open=True)
        self.phases = self._check_phases(phases)
        if work is not None and not callable(work):
            raise TypeError(
                f"work must be a function of the level or None, not {type(work).__name__}"
            )
        self._work = work if work is not None else float
        count("seed", seed, lo=-(1 << 63))
        self._rng = random.Random(seed)
        if clock is not None and not isinstance(clock, FakeClock):
            raise TypeError(
                f"clock must be a nrgloops.testing.FakeClock or None, not {type(clock).__name__}"
            )
        if meter is not None and not isinstance(meter, FakeMeter):
            raise TypeError(
                f"meter must be a nrgloops.testing.FakeMeter or None, not {type(meter).__name__}"
            )
        self.clock = clock
        self.meter = meter if meter is not None else FakeMeter(0.0)
        self._t0 = clock() if clock is not None else time.monotonic()
        self.work = 0.0
        self.iterations = 0
        self.energy_j = 0.0
        self._drawn = math.nan  # the power through the lag, W
        self._noise = 0.0
        self._noise_until = -math.inf
        self._times: list[float] = [self._t0]
        self._energies: list[float] = [0.0]

    @staticmethod
    def _check_phases(phases: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        try:
            pairs = list(phases)
        except TypeError:
            raise TypeError(
                f"phases must be a sequence of (at_s, factor) pairs, not {type(phases).__name__}"
            ) from None
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"phases[{k}] must be an (at_s, factor) pair, got {pair!r}")
            at = number(f"phases[{k}] time", pair[0], "seconds", lo=0.0)
            factor = number(f"phases[{k}] factor", pair[1], lo=0.0, lo_open=True)
            if out and at <= out[-1][0]:
                raise ValueError(
                    f"phases must be in increasing time, got {at:g} s after {out[-1][0]:g} s"
                )
            out.append((at, factor))
        return out

    def _from_table(self, level: float) -> float:
        assert self._table is not None
        i = int(round((level - self.lo) / self.step))
        if not 0 <= i < len(self._table):
            raise ValueError(
                f"level must be on the plant's grid lo={self.lo:g}, step={self.step:g} "
                f"({len(self._table)} levels), got {level!r}"
            )
        return self._table[i]

    # -- the plant ---------------------------------------------------------
    def now(self) -> float:
        """The plant's clock, s (the FakeClock's, else time.monotonic())."""
        return self.clock() if self.clock is not None else time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the plant was made."""
        return self.now() - self._t0

    def factor(self, at: float | None = None) -> float:
        """The phase's factor at ``at`` s since the start (default now)."""
        t = self.elapsed() if at is None else at
        f = 1.0
        for start, factor in self.phases:
            if t >= start:
                f = factor
        return f

    def power(self, level: float, at: float | None = None) -> float:
        """The power at ``level`` at ``at`` s since the start (default now),
        W: without the noise or the lag."""
        return float(self._power(level)) * self.factor(at)

    def iterate(self, level: float) -> float:
        """One iteration at ``level``; returns the power it drew, W."""
        t = self.elapsed()
        want = self.power(level, t)
        if self.noise > 0:
            if t >= self._noise_until:
                self._noise = self._rng.uniform(-self.noise, self.noise)
                self._noise_until = t + self.noise_s
            want *= 1.0 + self._noise
        dt = self.iteration_s
        if self._drawn != self._drawn or self.lag_s == 0:
            self._drawn = want
        else:
            self._drawn += (want - self._drawn) * (1.0 - math.exp(-dt / self.lag_s))
        watts = max(0.0, self._drawn)
        self.iterations += 1
        self.work += float(self._work(level))
        if self.clock is None:
            self.meter.watts = watts
            time.sleep(dt)
        else:
            self.clock.advance(dt)
            self.energy_j += watts * dt
            self._times.append(self.clock())
            self._energies.append(self.energy_j)
        return watts

    def windowed(self, window: float) -> float:
        """The average power over the last ``window`` s (FakeClock only), W;
        NaN before the first iteration."""
        if self.clock is None:
            raise NrgError("windowed() needs a FakeClock: in real time read the meter")
        times, energies = self._times, self._energies
        now = times[-1]
        if len(times) < 2:
            return math.nan
        k = max(0, bisect.bisect_right(times, now - window) - 1)
        span = now - times[k]
        if len(times) > 200_000 and k > 100_000:  # keep the history bounded
            del times[: k - 1], energies[: k - 1]
            k = 1
        return (energies[-1] - energies[k]) / span if span > 0 else math.nan

    def drive(
        self,
        knob: Knob[Any],
        cap: float | Callable[[float], float],
        seconds: float,
        *,
        window: float = 0.1,
        tick_s: float = 0.002,
        record_s: float = 0.01,
        stale: Sequence[tuple[float, float]] = (),
    ) -> list[Sample]:
        """Run ``knob`` against this plant for ``seconds`` of simulated time
        (FakeClock only), the way a loop does: an iteration at
        ``knob.value``, and every ``tick_s`` a tick with the windowed power.

        ``cap`` is a number of watts or a function of the time since the
        drive started (a cap that changes at run time); ``stale`` lists
        (from_s, to_s) spans during which the power reads NaN (a stale
        meter).  Returns a ``Sample`` every ``record_s`` seconds.
        """
        if self.clock is None:
            raise NrgError("drive() needs a FakeClock (SimulatedPlant(..., clock=FakeClock()))")
        if not isinstance(knob, Knob):
            raise TypeError(f"knob must be a nrgloops.Knob, not {type(knob).__name__}")
        if not callable(cap):
            fixed = number("cap", cap, "watts", lo=0.0, lo_open=True)
            cap = lambda t: fixed  # noqa: E731
        seconds = number("seconds", seconds, "seconds", lo=0.0)
        window = number("window", window, "seconds", lo=0.0, lo_open=True)
        tick_s = number("tick_s", tick_s, "seconds", lo=0.0, lo_open=True)
        record_s = number("record_s", record_s, "seconds", lo=0.0, lo_open=True)
        spans = [
            (number("stale from", a, "seconds"), number("stale to", b, "seconds")) for a, b in stale
        ]
        start = self.clock()
        next_tick = next_record = start
        limit = float(cap(0.0))
        knob._begin(start)  # as a loop does when it starts
        out: list[Sample] = []
        while True:
            now = self.clock()
            t = now - start
            if t >= seconds:
                break
            limit = float(cap(t))
            if now >= next_tick and self.iterations:
                power = self.windowed(window)
                if any(a <= t < b for a, b in spans):
                    power = math.nan
                knob._tick(power, limit, now, window)
                next_tick = max(next_tick + tick_s, now)
            if now >= next_record:
                out.append(
                    Sample(
                        t,
                        self.energy_j,
                        self.windowed(window),
                        knob.level,
                        knob.value,
                        limit,
                        self.work,
                    )
                )
                next_record += record_s
            self.iterate(knob.value)
        out.append(
            Sample(
                t, self.energy_j, self.windowed(window), knob.level, knob.value, limit, self.work
            )
        )
        return out


class Sample(NamedTuple):
    """One point of ``SimulatedPlant.drive``'s trace."""

    t: float  # s since the drive started
    energy_j: float  # the plant's energy so far, J
    power_w: float  # the windowed power, W
    level: float  # the knob's real-valued level
    value: float  # the grid level in force
    cap_w: float  # the cap, W
    work: float  # the work done so far
