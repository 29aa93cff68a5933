"""Knobs: a level the application reads (threads, batch size, accuracy) and
the library moves to hold a power cap.

Policies (each called at most once per ``dwell`` seconds, with the windowed power):

- ``"step"``: the paper's ramp: ``-step`` when over the cap, ``+step`` when under.
- ``"aimd"``: additive increase (``+step``), multiplicative decrease: the
  distance to ``lo`` is multiplied by ``factor`` (0.5: halved).
- ``"pi"``: proportional-integral control of the power error relative to the
  cap, aimed at the middle of the band; the integral is clamped so that the
  output stays in ``[lo, hi]`` (anti-windup); the output is quantised to ``step``.

Every policy moves down when the power is over the cap, up only when it is
under ``cap * (1 - band)``, and holds in between (hysteresis), and waits
``dwell`` seconds (default: the cap's window) between moves so that each
move's effect is seen before the next.  The paper's bare ramp is
``band=0, dwell=0``.

When no level lands in the band (one level is over the cap, the next one
down well under it) a bare ramp would go up and down for ever.  So a knob
remembers the lowest level it found over the cap, its *ceiling*: after a
move down from the ceiling it goes back up to it only after a hold that
triples each time the ceiling is confirmed (``dwell`` x 3, 9, 27 ... up to
``max_hold`` seconds).  Reversals thus fall off exponentially instead of
chattering, and the knob still finds out when the workload gets lighter.
(``backoff=False`` turns this off.)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

__all__ = ["POLICIES", "Knob"]

POLICIES = ("step", "aimd", "pi")
BACKOFF_GROWTH = 3.0  # the hold below the ceiling: 3, 9, 27 ... dwells


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _finite(name: str, value: Any, what: str) -> float:
    """A real number for ``update``: TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


class Knob:
    """A level in ``[lo, hi]`` on a grid of ``step``, moved to hold a power cap.

    >>> threads = Knob(2, 16, 2)                 # the paper's thread ramp
    >>> @nrg_adapt(PowerCap(45), knob=threads)
    ... def search(s): run(s, threads=threads.value)

    Args:
        lo, hi: the range of the level (``lo <= hi``).  The levels are
            ``lo, lo + step, ...`` up to the last one ``<= hi``: when
            ``hi - lo`` is not a multiple of ``step`` the top level is under
            ``hi`` (``Knob(1, 16, 2)`` tops out at 15), with a warning;
            ``top`` is the top level and ``levels`` their number.
        step: the grid and the size of one move (> 0).
        start: the first level (default ``hi``: full speed until told otherwise).
        policy: "step", "aimd" or "pi" (see the module's doc).
        band: hysteresis band as a fraction of the cap, in [0, 1).
        dwell: least seconds between two moves (>= 0); default the cap's window.
        factor: aimd's multiplicative decrease, in (0, 1).
        kp, ki: pi's gains, in spans of the range per unit of relative power
            error (kp) and per unit of error-second (ki).
        backoff: remember the lowest level seen over the cap (see the
            module's doc); a bool.
        max_hold: longest hold below the ceiling, s.

    ``value`` is an int when lo, hi and step are ints, else a float.
    ``reversals`` counts changes of direction, ``moves`` all moves.
    """

    def __init__(
        self,
        lo: float,
        hi: float,
        step: float,
        start: float | None = None,
        policy: str = "step",
        band: float = 0.05,
        dwell: float | None = None,
        *,
        factor: float = 0.5,
        kp: float = 0.5,
        ki: float = 1.0,
        backoff: bool = True,
        max_hold: float = 30.0,
    ) -> None:
        lo_f, hi_f, step_f = _number("lo", lo), _number("hi", hi), _number("step", step)
        if lo_f > hi_f:
            raise ValueError(f"lo must be <= hi, got lo={lo!r} > hi={hi!r}")
        if step_f <= 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        self._int = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step))
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        band_f = _number("band", band)
        if not 0.0 <= band_f < 1.0:
            raise ValueError(f"band must be a fraction of the cap in [0, 1), got {band!r}")
        if dwell is not None:
            dwell = _number("dwell", dwell)
            if dwell < 0:
                raise ValueError(f"dwell must be a number of seconds >= 0, got {dwell!r}")
        factor_f = _number("factor", factor)
        if not 0.0 < factor_f < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        kp_f, ki_f = _number("kp", kp), _number("ki", ki)
        if kp_f < 0 or ki_f < 0:
            raise ValueError(f"kp and ki must be >= 0, got kp={kp!r}, ki={ki!r}")
        if not isinstance(backoff, bool):
            raise TypeError(f"backoff must be True or False, not {type(backoff).__name__}")
        max_hold_f = _number("max_hold", max_hold)
        if max_hold_f <= 0:
            raise ValueError(f"max_hold must be a number of seconds > 0, got {max_hold!r}")
        self.lo, self.hi, self.step = lo_f, hi_f, step_f
        self.policy = policy
        self.band = band_f
        self.dwell = dwell
        self.factor = factor_f
        self.kp, self.ki = kp_f, ki_f
        self.backoff = backoff
        self.max_hold = max_hold_f
        self._levels = int(math.floor((hi_f - lo_f) / step_f + 1e-9))  # top index
        if (hi_f - lo_f) / step_f - self._levels > 1e-6:  # hi is off the grid
            n = self._levels + 1
            shown = [self._level(i) for i in range(min(n, 2))]
            listed = ", ".join(map(str, shown)) + (f", ..., {self.top}" if n > 2 else "")
            plural = "s" if n > 1 else ""
            warnings.warn(
                f"Knob(lo={lo!r}, hi={hi!r}, step={step!r}): hi - lo is not a multiple of "
                f"step, so the top level is {self.top}, not {hi!r} ({n} level{plural}: {listed})",
                stacklevel=2,
            )
        first = hi_f if start is None else _number("start", start)
        if not lo_f <= first <= hi_f:
            raise ValueError(f"start must be in [lo, hi] = [{lo!r}, {hi!r}], got {start!r}")
        self._index = self._nearest(first)
        self.value: int | float = self._level(self._index)
        self.reversals = 0
        self.moves = 0
        self._direction = 0
        self._last_move = -math.inf
        self._last_update = math.nan
        self._integral = float(self._index)  # pi's state, in grid steps
        self._ceiling: int | None = None  # lowest index seen over the cap
        self._hold = 0.0  # seconds to stay below the ceiling
        self._below_since = -math.inf

    # -- levels ------------------------------------------------------------
    def _nearest(self, v: float) -> int:
        return max(0, min(self._levels, int(round((v - self.lo) / self.step))))

    def _level(self, index: int) -> int | float:
        v = self.lo + index * self.step
        return int(round(v)) if self._int else v

    @property
    def levels(self) -> int:
        """How many levels the knob has."""
        return self._levels + 1

    @property
    def top(self) -> int | float:
        """The top level: the last ``lo + k * step`` that is ``<= hi``."""
        return self._level(self._levels)

    def set(self, value: float) -> None:
        """Put the knob at the level nearest ``value`` (clamped to [lo, hi])."""
        self._move_to(self._nearest(_number("value", value)), math.nan)
        self._integral = float(self._index)

    # -- control -----------------------------------------------------------
    def update(self, power: float, cap: float, now: float, dwell: float = 0.0) -> bool:
        """One control step with the windowed power (W) against the cap (W) at
        time ``now`` (monotonic s).  Returns True if the knob moved.

        ``dwell`` is used when the knob's own is None (the loops pass the
        cap's window).  The loops call this; call it yourself to drive a knob
        from your own measurements.  ``power`` must be finite and >= 0,
        ``cap`` finite and > 0, ``now`` finite, ``dwell`` finite and >= 0.
        """
        power = _finite("power", power, "a finite number of watts >= 0")
        if power < 0:
            raise ValueError(f"power must be a finite number of watts >= 0, got {power!r}")
        cap = _finite("cap", cap, "a finite number of watts > 0")
        if cap <= 0:
            raise ValueError(f"cap must be a finite number of watts > 0, got {cap!r}")
        now = _finite("now", now, "a finite time in seconds (time.monotonic())")
        dwell = _finite("dwell", dwell, "a finite number of seconds >= 0")
        if dwell < 0:
            raise ValueError(f"dwell must be a finite number of seconds >= 0, got {dwell!r}")
        return self._update(power, cap, now, dwell)

    def _update(self, power: float, cap: float, now: float, dwell: float) -> bool:
        """``update`` without the checks (the loops' ticks: their own numbers)."""
        wait = self.dwell if self.dwell is not None else dwell
        if now - self._last_move < wait:
            return False
        last, self._last_update = self._last_update, now
        dt = now - last if last == last else wait  # NaN before the first update
        over = power > cap
        under = power < cap * (1.0 - self.band)
        i = self._index
        if self.policy == "step":
            target = i - 1 if over else i + 1 if under else i
        elif self.policy == "aimd":
            cut = min(int(math.floor(i * self.factor)), i - 1)
            target = cut if over else i + 1 if under else i
        else:
            # the PI sizes the move; the band decides its direction, so that
            # a small error over the cap still moves the knob after a dwell
            target = self._pi(power, cap, max(dt, 0.0), over, under)
            target = min(target, i - 1) if over else max(target, i + 1) if under else i
        if over:
            target = max(0, min(target, i))  # never up while over the cap
            if self.backoff:
                self._note_over(i, now, wait)
        elif under:
            target = min(self._levels, max(target, i))  # never down while under the band
            if self.backoff and self._ceiling is not None:
                if i >= self._ceiling:
                    self._ceiling, self._hold = None, 0.0  # the workload got lighter
                elif target >= self._ceiling and now - self._below_since < self._hold:
                    target = self._ceiling - 1
        else:
            target = i  # in the band: hold
        if self.policy == "pi":
            # anti-windup: the integral may not run away from what the knob can do
            self._integral = max(target - 0.49, min(target + 0.49, self._integral))
        if target == i:
            return False
        self._move_to(target, now)
        return True

    def _pi(self, power: float, cap: float, dt: float, over: bool, under: bool) -> int:
        # Error relative to the middle of the band, as a fraction of the cap;
        # zero inside the band so that the integral rests there.
        e = (cap * (1.0 - self.band / 2.0) - power) / cap if (over or under) else 0.0
        span = float(max(self._levels, 1))
        self._integral += self.ki * e * dt * span
        self._integral = max(0.0, min(float(self._levels), self._integral))
        u = self._integral + self.kp * e * span
        return int(round(max(0.0, min(float(self._levels), u))))

    def _note_over(self, i: int, now: float, wait: float) -> None:
        if self._ceiling is None or i < self._ceiling:
            self._ceiling, self._hold = i, 0.0
        if i == self._ceiling:
            # over again at the ceiling: stay below it longer next time
            first = BACKOFF_GROWTH * max(wait, 0.01)
            self._hold = min(self.max_hold, max(BACKOFF_GROWTH * self._hold, first))
            self._below_since = now

    def _move_to(self, index: int, now: float) -> None:
        if index == self._index:
            return
        direction = 1 if index > self._index else -1
        if self._direction and direction != self._direction:
            self.reversals += 1
        self._direction = direction
        self._index = index
        self.value = self._level(index)
        self.moves += 1
        if now == now:  # not NaN (a manual set())
            self._last_move = now

    def __repr__(self) -> str:
        return (
            f"Knob(value={self.value}, lo={self._level(0)}, hi={self.top}, "
            f"step={self.step:g}, policy={self.policy!r}, band={self.band:g}, "
            f"reversals={self.reversals})"
        )
