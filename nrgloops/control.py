"""Knobs: a level the application reads (threads, batch size, accuracy) and
the library moves to hold a power cap.

Policies
--------
- ``"mix"`` (the default): a real-valued level between two grid levels,
  held by time-division, with a learned model of the power per level.
- ``"step"``: the paper's ramp: ``-step`` when over the cap, ``+step`` when under.
- ``"aimd"``: additive increase (``+step``), multiplicative decrease: the
  distance to ``lo`` is multiplied by ``factor`` (0.5: halved).
- ``"pi"``: proportional-integral control of the power error relative to the
  cap, aimed at the middle of the band; the integral is clamped so that the
  output stays in ``[lo, hi]`` (anti-windup); the output is quantised to ``step``.

Which to choose: ``"mix"`` whenever running the two levels around the target
in turn is fine for the application (threads, batch sizes, model variants:
almost always); it holds a cap that falls between two levels at the cap, not
at the level under it.  ``"step"`` where the level must not alternate (a
setting that is costly to change), at the price of the work between the
level under the cap and the cap; ``"aimd"``/``"pi"`` likewise, reaching the
level under the cap faster from far away.

The mixed level (after POET)
----------------------------
The state is a mix: two grid levels and the share of the time spent at the
upper one (``knob.level`` is the level it averages to).  The application
reads one grid level at a time (``knob.value``): at each tick of the loop
(every ~2 ms, or every iteration when iterations are slower) the knob picks
one of the two, so that the *time* spent at the upper one tracks the share:
a first-order sigma-delta on time, deterministic and evenly spread (like
perforate's accumulator), which costs nothing on the per-iteration path.  A
long stay at one level (a slow iteration, a preempted thread) is made up for
within a window.  This is POET's time-division between the two
configurations that bracket the target (Imes, Kim, Maggio, Hoffmann: "POET:
a portable approach to minimizing energy under soft real-time constraints",
RTAS 2015).  The two are the grid levels around the target, unless two
levels further apart do at least ``HULL_GAIN`` (3%) more work at the cap:
the best static mix is on the upper concave hull of (power, work) per level,
as POET's configurations are, and with power concave in the level and work
linear (``work=`` per level; default the level itself) that is the bottom
and top levels in turn.

The learned model
-----------------
The power of each grid level, ``P[i]`` W, is learned online from the windowed
power: each window's power ``y`` is attributed to the levels in force during
that window, weighted by the time spent at each (``y = sum w[i] P[i]``), and a
Kalman filter with a diagonal covariance updates the levels seen (POET tracks
its workload's base power with a scalar Kalman filter the same way):

- measurement noise: ``R = (noise * y)^2`` (``noise`` = 2%: a window's power
  is known to about 2%), or the relative noise seen on confident windows
  (an average over ~20 of them) where that is larger: a loaded machine, a
  noisy workload;
- process noise: each level's variance grows by ``(drift * P[i])^2`` per
  window (``drift`` = 0.5%), so old evidence fades and the model follows a
  workload that changes slowly;
- robustness: a window whose power is off a confident prediction by more
  than 2.5 standard deviations moves the model by 2.5 only (an outlier: a
  preempted thread, a burst of another program); a level never seen that
  ran for under 20% of a window is taken at its guess, not learned from it
  (that would amplify the noise five times);
- a phase change: when two windows in a row differ from a confident
  prediction the same way by more than ``phase`` (5%) and four standard
  deviations, or one window by more than three times ``phase``, the
  workload changed: every level is scaled by the ratio seen
  (POET's base-workload factor) and its variance reset, and so again on the
  next two windows unless they agree with the table (the window that showed
  the change was partly before it), so that levels not run lately follow too.

A level never seen is interpolated between the nearest ones seen; above the
highest one seen it is extrapolated up, conservatively (at least
proportionally to the level's index + 1); below the lowest one seen, with a
single level known, it is unknown, and the knob goes to the bottom to learn it.

The controller, once a window (``dwell``, default the cap's window): learn
from the window, then jump to the mix whose predicted power is
``cap * (1 - margin)`` (``margin`` = 1%), the prediction being linear between
the mix's two levels, as a time-division is.  The model's error on the window
is the correction: the next jump is made with the levels corrected.  A move
that changes the predicted power by under ``DEADBAND`` (0.7%) of the cap is
not made (noise); after a move of more than ``BIG_MOVE`` (2%) the knob waits
``window * 1.2`` before learning again, so that the window it learns from
holds one mix only (and the plant's lag has settled).  Over the cap before
anything is known (the loop's start), it goes to the bottom at once to learn
it.  A change of the cap re-plans at once, from the model.  So a change of
cap settles in about one window, a change of workload in two or three
(``benchmarks/control.py`` measures it).

Unreachable and non-binding caps (after CoPPer: Imes, Zhang, Zhao,
Hoffmann, ICAC 2019, whose controller detects targets it cannot reach and
backs off rather than winds up): when the bottom level's learned power is over the cap, the
knob sits at the bottom, warns once (pointing at the user's line: the call of
the adapted function, ``loop.step()``) and records by how much
(``unreachable_w``), judged only on windows spent wholly at the bottom, with
one window before them for the lag (a probe up, or the lag of the move down,
would overstate it); a change of the cap starts that record afresh;
when the top level's is under it, the knob sits at the top and ``bound``
stays False.  The state is ``x`` in its range and the model: nothing winds up.

A windowed power of NaN (a stale meter: no good sample for a while) is
unknown: the knob goes to the bottom, warns once, and neither learns nor
plans until the power returns.

The grid policies
-----------------
Every grid policy moves down when the power is over the cap, up only when it
is under ``cap * (1 - band)``, and holds in between (hysteresis), and waits
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
(``backoff=False`` turns this off.)  The grid policies learn the model too
(for ``predict`` and a loop's ``demand_w``) but do not use it.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from nrgloops._attributes import Setting
from nrgloops._checks import boolean, number
from nrgloops._origin import user_stacklevel

__all__ = ["GRID_POLICIES", "POLICIES", "Knob", "PowerModel"]

POLICIES = ("mix", "step", "aimd", "pi")
GRID_POLICIES = ("step", "aimd", "pi")
BACKOFF_GROWTH = 3.0  # the hold below the ceiling: 3, 9, 27 ... dwells
MIX_DWELL = 1.0  # mix: a control step every window (the dwell the loops pass)
LEARN_GUARD = 0.2  # after a move, learn from a window that starts 0.2 window later
DEADBAND = 0.007  # mix: moves predicted to change the power by < 0.7% of the cap are not made
FIRST_VARIANCE = 0.5  # a level seen for the first time: std 50% of the guess
PHASE_SIGMAS = 4.0
BIG_MOVE = 0.02  # mix: a move of 2% of the cap or more waits for its lag before learning
HULL_GAIN = 0.03  # mix far-apart levels only for 3% more work than the adjacent ones
PHASE_FOLLOW = 2  # after a phase change the next 2 windows rescale every level too
PHASE_AT_ONCE = 3.0  # a window off by 3 x phase (15%) is a phase change without confirmation
MIN_SHARE = 0.2  # a new level is learned from windows where it ran 20% of the time or more
NOISE_LEARN = 0.05  # the seen noise averages over ~20 windows
CLIP_SIGMAS = 2.5  # a confident model's error is clipped at 2.5 standard deviations


class PowerModel:
    """The power of each of ``n`` grid levels, W, learned from windowed powers.

    A Kalman filter with a diagonal covariance (see the module's doc):
    ``observe({index: share of the window's time}, watts)`` learns from one
    window; ``table()`` gives the predicted power per level (NaN where the
    model cannot tell: below the only level seen); ``predict(x)`` at a real
    index, linear between grid levels.
    """

    def __init__(self, n: int, noise: float = 0.02, drift: float = 0.005, phase: float = 0.05):
        self.n = n
        self.noise, self.drift, self.phase = noise, drift, phase
        self.p = [math.nan] * n  # W per level; NaN: never seen
        self.v = [math.inf] * n  # variance, W^2
        self.phases = 0  # phase changes detected
        self.observations = 0
        self._suspect = 0.0  # the last window's large relative error (a phase, or an outlier?)
        self._follow = 0  # windows after a phase change that rescale every level
        self._seen_noise2 = 0.0  # the relative noise seen on confident windows, squared
        self._table: list[float] | None = None

    @property
    def known(self) -> int:
        """How many levels have been seen."""
        return sum(1 for p in self.p if p == p)

    def table(self) -> list[float]:
        """Predicted power per grid level, W (NaN where unknown)."""
        if self._table is None:
            self._table = self._build()
        return self._table

    def _build(self) -> list[float]:
        p, n = self.p, self.n
        seen = [i for i in range(n) if p[i] == p[i]]
        out = [math.nan] * n
        if not seen:
            return out
        for i in seen:
            out[i] = p[i]
        for a, b in zip(seen, seen[1:], strict=False):  # between two seen: linear
            for i in range(a + 1, b):
                out[i] = p[a] + (p[b] - p[a]) * (i - a) / (b - a)
        top = seen[-1]
        slope = p[top] / (top + 1)  # up: at least proportional to index + 1
        if len(seen) > 1:
            slope = max(slope, (p[top] - p[seen[-2]]) / (top - seen[-2]))
        for i in range(top + 1, n):
            out[i] = p[top] + slope * (i - top)
        low = seen[0]
        if len(seen) > 1 and low > 0:  # down: the slope of the two lowest seen
            s2 = (p[seen[1]] - p[low]) / (seen[1] - low)
            for i in range(low):
                out[i] = max(0.0, p[low] - s2 * (low - i))
        return out

    def predict(self, x: float) -> float:
        """Predicted power at real index ``x`` (a time-division between the
        grid levels around it), W; NaN where unknown."""
        t = self.table()
        i = max(0, min(self.n - 1, int(math.floor(x))))
        f = x - i
        if f <= 0.0 or i + 1 >= self.n:
            return t[i]
        return t[i] * (1.0 - f) + t[i + 1] * f

    def observe(self, weights: dict[int, float], y: float, trust: float = 1.0) -> bool:
        """Learn from one window of power ``y`` W, spent at the levels of
        ``weights`` (index -> share, summing to 1); ``trust`` in (0, 1]
        scales down a partial window's weight.  True if the window showed a
        phase change (then every level was scaled)."""
        if not weights or not math.isfinite(y) or y < 0 or not trust > 0:
            return False
        self.observations += 1
        p, v = self.p, self.v
        guess = self.table()
        # a level never seen that ran for a small share of the window is
        # taken at its guess: learning it from that share would amplify the noise
        brief = {
            i: w
            for i, w in weights.items()
            if p[i] != p[i] and w < MIN_SHARE and guess[i] == guess[i]
        }
        if brief:
            weights = {i: w for i, w in weights.items() if i not in brief}
            y -= sum(w * guess[i] for i, w in brief.items())
            if not weights or y <= 0:
                return False
        seen = all(p[i] == p[i] for i in weights)
        if seen:  # a prediction known to better than half the phase threshold
            sd = math.sqrt(sum(w * w * v[i] for i, w in weights.items()))
            seen = sd < 0.5 * self.phase * sum(w * p[i] for i, w in weights.items())
        first = [i for i in weights if p[i] != p[i]]
        for i in first:  # first sight: start from the guess, very uncertain
            g = guess[i] if guess[i] == guess[i] else y
            p[i], v[i] = g, (FIRST_VARIANCE * max(g, y, 1e-9)) ** 2
        for i in range(self.n):  # the process noise: old evidence fades
            if p[i] == p[i]:
                v[i] += (self.drift * p[i]) ** 2
        pred = sum(w * p[i] for i, w in weights.items())
        r = y - pred
        noise = max(self.noise, math.sqrt(self._seen_noise2))
        s = sum(w * w * v[i] for i, w in weights.items()) + (noise * y) ** 2 / trust
        self._table = None
        sd = math.sqrt(s)
        if self._follow and pred > 0 and all(p[i] == p[i] for i in weights):
            # just after a phase change (seen on a window partly before it):
            # the whole table follows, until a window agrees with it
            self._follow -= 1
            if abs(r) <= 2.0 * self.noise * pred:  # agrees (within the noise): done
                self._follow = 0
            else:
                self._scale(y / pred)
                return True
        if seen and pred > 0 and abs(r) > self.phase * pred and abs(r) > PHASE_SIGMAS * sd:
            rel = r / pred
            if self._suspect * rel > 0 or abs(rel) > PHASE_AT_ONCE * self.phase:
                # a second window off the same way: the workload changed
                self._suspect = 0.0
                self.phases += 1
                self._follow = PHASE_FOLLOW
                self._scale(y / pred)
                return True
            self._suspect = rel  # one window off: an outlier until confirmed
        else:
            self._suspect = 0.0
        if seen:  # a robust update: one outlier moves a confident model little
            r = max(-CLIP_SIGMAS * sd, min(CLIP_SIGMAS * sd, r))
            # the noise seen on confident predictions (a loaded machine, a
            # noisy workload): the filter trusts one window no more than that
            self._seen_noise2 += NOISE_LEARN * ((r / pred) ** 2 - self._seen_noise2)
        for i, w in weights.items():
            k = w * v[i] / s
            p[i] = max(0.0, p[i] + k * r)
            v[i] = max(v[i] * (1.0 - k * w), 1e-12)
        for i in first:  # one window is not enough to be sure of a level
            v[i] = max(v[i], (2.0 * self.noise * p[i]) ** 2)
        return False

    def _scale(self, ratio: float) -> None:
        p, v = self.p, self.v
        for i in range(self.n):
            if p[i] == p[i]:
                p[i] *= ratio
                v[i] = max(v[i], (self.phase * p[i]) ** 2)
        self._table = None

    def forget(self) -> None:
        """Drop everything learned."""
        self.p = [math.nan] * self.n
        self.v = [math.inf] * self.n
        self._table = None


N = TypeVar("N", int, float)  # a knob's level: int when lo, hi and step are ints


def _fraction(name: str, hi: float = 1.0) -> Callable[[Any], float]:
    return lambda v: number(name, v, "a fraction of the cap", lo=0.0, hi=hi, hi_open=True)


# which policies use each policy-specific argument (and its default)
_USED_BY: dict[str, tuple[tuple[str, ...], Any]] = {
    "band": (GRID_POLICIES, 0.05),
    "factor": (("aimd",), 0.5),
    "kp": (("pi",), 0.5),
    "ki": (("pi",), 1.0),
    "backoff": (GRID_POLICIES, True),
    "max_hold": (GRID_POLICIES, 30.0),
    "margin": (("mix",), 0.01),
    "work": (("mix",), None),
}


class Knob(Generic[N]):
    """A level in ``[lo, hi]`` on a grid of ``step``, moved to hold a power cap.

    >>> threads = Knob(2, 16, 2)                 # mixed levels, learned model
    >>> @nrg_adapt(PowerCap(45), knob=threads)
    ... def search(s): run(s, threads=threads.value)

    Args:
        lo, hi: the range of the level (``lo <= hi``).  The levels are
            ``lo, lo + step, ...`` up to the last one ``<= hi``: when
            ``hi - lo`` is not a multiple of ``step`` the top level is under
            ``hi`` (``Knob(1, 16, 2)`` tops out at 15), with a warning;
            ``top`` is the top level and ``levels`` their number.
        step: the grid and the size of one grid move (> 0).
        start: the first level (default ``hi``: full speed until told otherwise).
        policy: "mix" (default), "step", "aimd" or "pi" (see the module's doc).
        band: grid policies' hysteresis band as a fraction of the cap, in [0, 1).
        dwell: least seconds between two control steps (>= 0); default the
            cap's window.
        factor: aimd's multiplicative decrease, in (0, 1).
        kp, ki: pi's gains, in spans of the range per unit of relative power
            error (kp) and per unit of error-second (ki).
        backoff: grid policies remember the lowest level seen over the cap
            (see the module's doc); a bool.
        max_hold: longest hold below the ceiling, s.
        margin: mix aims at ``cap * (1 - margin)``, in [0, 0.5).
        noise: the model's relative noise of one window's power, in (0, 1).
        drift: the model's relative drift of a level's power per window, in [0, 1).
        phase: the relative error of a confident prediction that counts as a
            change of workload, in (0, 1).
        work: the useful work per iteration at each level (a function of
            the level, or a sequence per level; default: the level itself,
            as for threads).  mix alternates the two levels whose mix does
            the most work at the cap: the two around it, or two further
            apart when the power per level is concave (see the module's doc).

    ``value`` is the grid level to use now (an int when lo, hi and step are
    ints, else a float; move it with ``set()``); ``level`` the real-valued
    level it averages to; ``reversals`` counts changes of direction,
    ``moves`` all moves; ``state()`` all of it as a dict;
    ``predict(level)`` the learned power.

    Settings after the knob is made: ``band``, ``factor``, ``kp``, ``ki``,
    ``backoff``, ``max_hold`` and ``margin`` may be assigned (checked as the
    arguments are; they take effect at the next control step); ``lo``,
    ``hi``, ``step``, ``policy`` and ``dwell`` are read-only (the grid, the
    state and a loop's tick are built from them): assigning one raises an
    AttributeError.  Any other attribute name raises too (``__slots__``).
    An argument the policy does not use (``band=`` with "mix", ``margin=``
    with "step", ...) given a value other than its default warns, naming
    the policies that use it.
    """

    __slots__ = (
        "_lo", "_hi", "_step", "_policy", "_dwell", "_band", "_factor", "_kp", "_ki",
        "_backoff", "_max_hold", "_margin", "_int", "_levels", "model", "_work", "_index",
        "value", "reversals", "moves", "_direction", "_last_move", "_last_update",
        "_integral", "_ceiling", "_hold", "_below_since", "_x", "_a", "_b", "_f", "_err",
        "_t_tick", "_t_first", "_t_learned", "_switches", "_cap", "unreachable_w",
        "_unreachable_cap", "bound", "stale", "_warned", "_bottom_text", "_window",
    )  # fmt: skip

    lo = Setting(None, "the grid of levels is built from it")
    hi = Setting(None, "the grid of levels is built from it")
    step = Setting(None, "the grid of levels is built from it")
    policy = Setting(None, "the control state is the policy's")
    dwell = Setting(None, "a running loop sized its ticks from it")
    band = Setting(_fraction("band"))
    factor = Setting(lambda v: number("factor", v, lo=0.0, hi=1.0, lo_open=True, hi_open=True))
    kp = Setting(lambda v: number("kp", v, lo=0.0))
    ki = Setting(lambda v: number("ki", v, lo=0.0))
    backoff = Setting(lambda v: boolean("backoff", v))
    max_hold = Setting(lambda v: number("max_hold", v, "seconds", lo=0.0, lo_open=True))
    margin = Setting(_fraction("margin", 0.5))

    def __init__(
        self,
        lo: N,
        hi: N,
        step: N,
        start: N | None = None,
        policy: str = "mix",
        band: float = 0.05,
        dwell: float | None = None,
        *,
        factor: float = 0.5,
        kp: float = 0.5,
        ki: float = 1.0,
        backoff: bool = True,
        max_hold: float = 30.0,
        margin: float = 0.01,
        noise: float = 0.02,
        drift: float = 0.005,
        phase: float = 0.05,
        work: Callable[[float], float] | Sequence[float] | None = None,
    ) -> None:
        lo_f, hi_f = number("lo", lo), number("hi", hi)
        step_f = number("step", step)
        if lo_f > hi_f:
            raise ValueError(f"lo must be <= hi, got lo={lo!r} > hi={hi!r}")
        if step_f <= 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        self._int = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step))
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if dwell is not None:
            dwell = number("dwell", dwell, "seconds", lo=0.0)
        self.band, self.factor, self.kp, self.ki = band, factor, kp, ki  # (checked)
        self.backoff, self.max_hold, self.margin = backoff, max_hold, margin
        noise_f = number("noise", noise, "a fraction", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        drift_f = number("drift", drift, "a fraction", lo=0.0, hi=1.0, hi_open=True)
        phase_f = number("phase", phase, "a fraction", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        given: dict[str, Any] = {
            "band": band,
            "factor": factor,
            "kp": kp,
            "ki": ki,
            "backoff": backoff,
        }
        given.update({"max_hold": max_hold, "margin": margin, "work": work})
        for name, value in given.items():
            users, default = _USED_BY[name]
            changed = value is not None if default is None else value != default
            if policy not in users and changed:
                warnings.warn(
                    f"Knob(policy={policy!r}): {name}= is not used by this policy "
                    f"(only by {', '.join(users)}); it has no effect",
                    stacklevel=2,
                )
        self._lo, self._hi, self._step = lo_f, hi_f, step_f
        self._policy = policy
        self._dwell = dwell
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
        first = hi_f if start is None else number("start", start)
        if not lo_f <= first <= hi_f:
            raise ValueError(f"start must be in [lo, hi] = [{lo!r}, {hi!r}], got {start!r}")
        self.model = PowerModel(self._levels + 1, noise_f, drift_f, phase_f)
        self._work = self._check_work(work)
        self._index = self._nearest(first)
        self.value: N = self._level(self._index)
        self.reversals = 0
        self.moves = 0
        self._direction = 0
        self._last_move = -math.inf
        self._last_update = math.nan
        self._integral = float(self._index)  # pi's state, in grid steps
        self._ceiling: int | None = None  # lowest index seen over the cap
        self._hold = 0.0  # seconds to stay below the ceiling
        self._below_since = -math.inf
        # the mix: x, and the sigma-delta that spreads the time between the
        # two grid levels around it
        self._x = float(self._index)
        self._a = self._b = self._index  # the mix: _f of the time at _b, the rest at _a
        self._f = 0.0
        self._err = 0.0
        self._t_tick = math.nan
        self._t_first = math.nan  # the first tick
        self._t_learned = -math.inf  # the end of the last window learned from
        self._switches: deque[tuple[float, int]] = deque()  # (from time, index in force)
        self._cap = math.nan  # the cap at the last plan
        self.unreachable_w: float | None = None  # largest shortfall seen at this cap, W
        self._unreachable_cap = math.nan  # the cap unreachable_w is about
        self.bound = False  # the cap made the knob leave the top at least once
        self.stale = 0  # ticks with no power reading
        self._warned: set[str] = set()
        self._bottom_text = ""  # how warnings name the bottom (a loop's alternate)
        self._window = 0.1  # the window of the powers seen, s (the loops pass theirs)

    def _begin(self, now: float) -> None:
        """A loop starts driving this knob at ``now``: what it learned stays,
        the timing starts afresh."""
        self._t_first = self._t_tick = now
        self._switches.clear()
        self._switches.append((now, self._index))
        self._last_update = math.nan
        self._last_move = -math.inf
        self._t_learned = -math.inf
        self._cap = math.nan
        self._err = 0.0
        self._unreachable_cap = math.nan  # a new loop: its own report

    def _follow_cap(self, cap: float) -> None:
        """What was out of reach is about one cap: a new cap starts afresh."""
        if cap != self._unreachable_cap:
            self._unreachable_cap = cap
            self.unreachable_w = None

    def _wholly_at_bottom(self, now: float, window: float) -> bool:
        """True if the window ending now, and one before it, were
        spent at the bottom only: a window holding a probe up (or the lag of
        a move down) overstates what the bottom draws."""
        start = now - window
        if start < self._t_first or window <= 0:
            return False
        w = self._weights(start - window, now)  # (a window before it: the lag settled)
        return w.get(0, 0.0) > 1.0 - 1e-9

    def _bottom(self) -> str:
        return self._bottom_text or f"the bottom level {self._level(0)}"

    def _check_work(self, work: Callable[[float], float] | Sequence[float] | None) -> list[float]:
        n = self._levels + 1
        if work is None:
            return [float(self._level(i)) for i in range(n)]
        if callable(work):
            got = [work(self._level(i)) for i in range(n)]
            return [number(f"work({self._level(i)})", w, lo=0.0) for i, w in enumerate(got)]
        if isinstance(work, Sequence) and not isinstance(work, (str, bytes)):
            if len(work) != n:
                raise ValueError(f"work must give one number per level ({n}), got {len(work)}")
            return [number(f"work[{i}]", w, lo=0.0) for i, w in enumerate(work)]
        raise TypeError(
            f"work must be a function of the level, a sequence per level or None, "
            f"not {type(work).__name__}"
        )

    # -- levels ------------------------------------------------------------
    def _nearest(self, v: float) -> int:
        return max(0, min(self._levels, int(round((v - self.lo) / self.step))))

    def _level(self, index: int) -> N:
        v = self.lo + index * self.step
        return cast(N, int(round(v)) if self._int else v)

    @property
    def levels(self) -> int:
        """How many levels the knob has."""
        return self._levels + 1

    @property
    def top(self) -> N:
        """The top level: the last ``lo + k * step`` that is ``<= hi``."""
        return self._level(self._levels)

    @property
    def level(self) -> float:
        """The real-valued level the knob averages to (mix), else ``value``."""
        return self._lo + self._x * self._step

    def set(self, value: float) -> None:
        """Put the knob at the level nearest ``value`` (clamped to [lo, hi])."""
        i = self._nearest(number("value", value))
        self._move_to(i, math.nan)
        self._integral = float(self._index)

    def predict(self, level: float) -> float:
        """The learned power at ``level`` (a real level: a mix of the two
        grid levels around it), W; NaN until the model can tell."""
        v = number("level", level)
        x = max(0.0, min(float(self._levels), (v - self.lo) / self.step))
        return self.model.predict(x)

    def state(self) -> dict[str, Any]:
        """What the knob is doing, as a dict (plain numbers: JSON-ready
        once NaN are made null)."""
        return {
            "value": self.value,
            "level": self.level,
            "lo": self._level(0),
            "hi": self.top,
            "top": self.top,
            "step": self.step,
            "levels": self.levels,
            "policy": self.policy,
            "band": self.band,
            "margin": self.margin,
            "moves": self.moves,
            "reversals": self.reversals,
            "model_w": list(self.model.table()),
            "phases": self.model.phases,
            "demand_w": self.model.predict(float(self._levels)),
            "unreachable_w": self.unreachable_w,
            "bound": self.bound,
            "stale_ticks": self.stale,
        }

    # -- control -----------------------------------------------------------
    def update(
        self,
        power: float,
        cap: float,
        now: float,
        dwell: float = 0.0,
        window: float | None = None,
    ) -> bool:
        """One control step with the windowed power (W) against the cap (W) at
        time ``now`` (monotonic s).  Returns True if the knob moved.

        ``dwell`` is used when the knob's own is None (the loops pass the
        cap's window).  ``window`` is the span the power averages over, s
        (default: ``dwell``, or the time since the previous step).  Each call
        also spreads a mix in time (the loops do that at each of their ticks);
        call this yourself to drive a knob from your own measurements, as
        often as you like: the control steps are a dwell apart.  ``power`` must
        be finite and >= 0, ``cap`` finite and > 0, ``now`` finite,
        ``dwell`` finite and >= 0, ``window`` None or finite and > 0.
        """
        power = number("power", power, "watts", lo=0.0)
        cap = number("cap", cap, "watts", lo=0.0, lo_open=True)
        now = number("now", now, "seconds (time.monotonic())")
        dwell = number("dwell", dwell, "seconds", lo=0.0)
        if window is not None:
            window = number("window", window, "seconds", lo=0.0, lo_open=True)
        if window is None:
            window = dwell if dwell > 0 else now - self._last_update
            window = window if window > 0 else 0.0
        if window > 0:
            self._window = window
        if self._t_first != self._t_first:
            # the first power seen was drawn at the level in force
            self._t_first = self._t_tick = now - window
            self._switches.append((self._t_first, self._index))
        self._follow_cap(cap)
        if self.policy != "mix":
            return self._update(power, cap, now, dwell)
        moves = self.moves
        self._spread(now)
        if cap != self._cap and self._cap == self._cap and self.model.known:
            self._cap = cap
            self._plan(cap, now)
        else:
            self._mix_update(power, cap, now, dwell, window)
        return self.moves != moves

    def _tick(self, power: float, cap: float, now: float, window: float) -> None:
        """What a loop does at each tick: spread the mix, follow a new cap at
        once, and take a control step once a dwell (no checks: the loops'
        own numbers; ``power`` may be NaN, a stale meter)."""
        if self._t_first != self._t_first:
            self._t_first = now
            self._t_tick = now
            self._switches.append((now, self._index))
        self._window = window
        self._follow_cap(cap)
        if power != power:
            self._on_stale(now)
            return
        mix = self.policy == "mix"
        if mix:
            self._spread(now)
        early = now - self._t_first < 0.5 * window  # the first windows hold few samples
        if not mix:
            if cap != self._cap and self._cap == self._cap:
                self._ceiling, self._hold = None, 0.0  # a new cap: what was over may not be
            if not early:
                self._learn(power, now, window)
                self._update(power, cap, now, window)
            self._cap = cap
            return
        if cap != self._cap and self._cap == self._cap and self.model.known:
            self._cap = cap
            self._plan(cap, now)  # a new cap: re-plan from the model at once
            return
        if early:
            if power > cap and not self.model.known:
                # over from the start: learn from the partial window (as the
                # noisy figure it is), then plan (the bottom, to learn it)
                # rather than stay over
                self._learn(power, now, window, least=0.0, cap=cap)
                self._cap = cap
                self._last_update = now
                self._plan(cap, now)
            return
        self._mix_update(power, cap, now, window, window)

    def _on_stale(self, now: float) -> None:
        self.stale += 1
        if "stale" not in self._warned:
            self._warned.add("stale")
            warnings.warn(
                "the meter's windowed power is unknown (NaN: no good sample lately): "
                f"running {self._bottom()} until it returns",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
        if self.policy == "mix":
            if self._x > 0:
                self._set_x(0.0, now)
            self._spread(now)
        elif self._index > 0:
            self._move_to(0, now)
            self._integral = 0.0
            self._switches.append((now, 0))

    # -- the mix -----------------------------------------------------------
    def _spread(self, now: float) -> None:
        """Pick the grid level for the next tick: the share of the time spent
        at the upper of the mix's two levels tracks the mix's share."""
        dt = now - self._t_tick
        self._t_tick = now
        if not dt > 0:  # (NaN on the first tick)
            dt = 0.0
        low, high, f = self._a, self._b, self._f
        if f <= 1e-9 or low == high:
            index, self._err = low, 0.0
        else:
            upper = self._index == high
            if self._index == low or upper:
                self._err += (f - (1.0 if upper else 0.0)) * dt
            else:
                self._err = 0.0
            step = dt if dt > 0 else 1.0
            # a long stay at one level (a slow iteration, a preempted thread)
            # is made up for within a window, not for ever after
            cap_err = self._window
            self._err = max(-cap_err, min(cap_err, self._err))
            index = high if self._err + f * step >= 0.5 * step else low
        if index != self._index:
            self._index = index
            self.value = self._level(index)
            self._switches.append((now, index))

    def _weights(self, a: float, b: float) -> dict[int, float]:
        """Share of [a, b] spent at each grid index."""
        sw = self._switches
        while len(sw) > 1 and sw[1][0] <= a - 1.0:  # keep a second more than asked
            sw.popleft()
        out: dict[int, float] = {}
        span = b - a
        if span <= 0:
            return out
        items = list(sw)
        for k, (t, i) in enumerate(items):
            t_end = items[k + 1][0] if k + 1 < len(items) else b
            lo, hi = max(t, a), min(t_end, b)
            if hi > lo:
                out[i] = out.get(i, 0.0) + (hi - lo) / span
        return out

    def _learn(
        self, power: float, now: float, window: float, least: float = 0.5, cap: float = math.inf
    ) -> bool:
        """Learn from the window ending now if it holds no move (nor the
        lag after one) and spans at least ``least`` of a window; True if it
        showed a phase change."""
        start = max(now - window, self._t_first)
        span = now - start
        if span <= 0 or span < least * window or start < self._last_move + LEARN_GUARD * window:
            return False
        if start < self._t_learned - 0.5 * window:
            return False  # mostly the window learned from last time
        w = self._weights(start, now)
        total = sum(w.values())
        if total < 0.9:
            return False
        self._t_learned = now
        # a partial window (the loop's first) averages fewer samples; a whole one
        # is told by where it starts, not by span / window, which rounds below 1
        # once time.monotonic() is large (seen: 0.05 s windows after 2 h of uptime)
        whole = now - window >= self._t_first
        trust = 1.0 if whole else min(1.0, span / window)
        shares = {i: s / total for i, s in w.items()}
        phase = self.model.observe(shares, power, trust)
        if self._x == 0.0 and whole and self._wholly_at_bottom(now, window):
            self._at_bottom(power, cap)
        return phase

    def _at_bottom(self, power: float, cap: float) -> None:
        """A whole window at the bottom: over the cap, the cap is not
        reachable (measured, and by the model's smoothed figure)."""
        bottom = self.model.p[0]
        if power > cap and bottom > cap:
            self._note_unreachable(min(power, bottom), cap)

    def _mix_update(
        self,
        power: float,
        cap: float,
        now: float,
        dwell: float,
        window: float,
    ) -> bool:
        wait = self.dwell if self.dwell is not None else MIX_DWELL * dwell
        last = self._last_update
        if last == last and now - last < wait:
            return False
        if now - self._last_move < (1.0 + LEARN_GUARD) * window and self.model.known:
            return False  # the window still holds the previous mix
        self._last_update = now
        self._learn(power, now, window, cap=cap)
        self._cap = cap
        if not self.model.known:
            return False
        before = self._x
        self._plan(cap, now)
        return self._x != before

    def _plan(self, cap: float, now: float) -> None:
        """Jump to the highest x whose predicted power is cap * (1 - margin)."""
        target = cap * (1.0 - self.margin)
        t = self.model.table()
        top = self._levels
        x = 0.0
        for i in range(top, -1, -1):
            p = t[i]
            if p != p:
                break  # below the only level seen: go to the bottom and learn it
            if p <= target:
                if i == top:
                    x = float(top)
                else:
                    nxt = t[i + 1]
                    x = i + (min(1.0, (target - p) / (nxt - p)) if nxt > p else 0.0)
                break
        if x < top:
            self.bound = True
        a = min(int(math.floor(x)), top)
        b, f = min(a + 1, top), x - a
        if 0 < x < top:
            a, b, f = self._best_pair(t, target, a, b, f)
        old = (1.0 - self._f) * t[self._a] + self._f * t[self._b]
        new = (1.0 - f) * t[a] + f * t[b]
        small = abs(new - old) < DEADBAND * cap
        if small and x not in (0.0, float(top)):
            return  # (noise: hold)
        # (a small move leaves the windows it falls in clean enough to learn from)
        self._set_mix(a, b, f, now, big=not abs(new - old) < BIG_MOVE * cap)

    def _best_pair(
        self, t: list[float], target: float, a: int, b: int, f: float
    ) -> tuple[int, int, float]:
        """The two levels whose mix at ``target`` W does the most work (the
        upper concave hull of (power, work), as POET's configurations):
        better than the two adjacent levels by more than ``HULL_GAIN``."""
        work = self._work
        adjacent = (1.0 - f) * work[a] + f * work[b]
        if any(p != p for p in t):
            return (a, b, f)
        hull: list[int] = []  # the upper hull of (power, work), by power
        for i in sorted(range(len(t)), key=lambda i: (t[i], -work[i])):
            while len(hull) >= 2:
                o, m = hull[-2], hull[-1]
                turn = (t[m] - t[o]) * (work[i] - work[o]) - (work[m] - work[o]) * (t[i] - t[o])
                if turn < 0:
                    break
                hull.pop()
            hull.append(i)
        pair = (a, b, f)
        best = adjacent
        for i, j in zip(hull, hull[1:], strict=False):
            if t[i] <= target < t[j]:
                if work[j] <= work[i]:
                    pair, best = (i, i, 0.0), work[i]  # more power, no more work
                else:
                    g = (target - t[i]) / (t[j] - t[i])
                    pair, best = (i, j, g), (1.0 - g) * work[i] + g * work[j]
                break
        if best <= adjacent + HULL_GAIN * abs(adjacent):
            return (a, b, f)
        return pair

    def _set_x(self, x: float, now: float) -> None:
        """Move to the mix of the two grid levels around real index ``x``."""
        x = max(0.0, min(float(self._levels), x))
        a = min(int(math.floor(x)), self._levels)
        self._set_mix(a, min(a + 1, self._levels), x - a, now)

    def _set_mix(self, a: int, b: int, f: float, now: float, big: bool = True) -> None:
        if f <= 1e-12:
            b, f = a, 0.0
        x = (1.0 - f) * a + f * b
        if (a, b, f) == (self._a, self._b, self._f):
            return
        d = x - self._x
        direction = 1 if d > 0 else -1 if d < 0 else 0
        if direction and self._direction and direction != self._direction:
            self.reversals += 1
        if direction:
            self._direction = direction
        self._a, self._b, self._f, self._x = a, b, f, x
        self.moves += 1
        if big:
            self._last_move = now
        self._err = 0.0
        self._spread(now)  # the new mix from this tick on

    # -- the grid policies -------------------------------------------------
    def _update(self, power: float, cap: float, now: float, dwell: float) -> bool:
        """A grid policy's step without the checks (the loops' ticks: their own numbers)."""
        wait = self.dwell if self.dwell is not None else dwell
        if now - self._last_move < wait:
            return False
        last, self._last_update = self._last_update, now
        dt = now - last if last == last else wait  # NaN before the first update
        over = power > cap
        under = power < cap * (1.0 - self.band)
        if over or self._index < self._levels:
            self.bound = True
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
        if over and i == 0 and self._wholly_at_bottom(now, self._window):
            self._note_unreachable(power, cap)
        if target == i:
            return False
        self._move_to(target, now)
        self._switches.append((now, target))
        return True

    def _note_unreachable(self, power: float, cap: float) -> None:
        """The bottom draws ``power`` W over ``cap`` (on a window wholly at
        the bottom): record the largest shortfall at this cap, warn once."""
        short = power - cap
        if self.unreachable_w is None or short > self.unreachable_w:
            self.unreachable_w = short
        if "unreachable" not in self._warned:
            self._warned.add("unreachable")
            warnings.warn(
                f"the cap {cap:.4g} W is not reachable: {self._bottom()} draws "
                f"{power:.4g} W ({short:.3g} W over it); running it",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )

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
        self._x = float(index)
        self._a = self._b = index
        self._f = 0.0
        self.value = self._level(index)
        self.moves += 1
        if now == now:  # not NaN (a manual set())
            self._last_move = now

    def __repr__(self) -> str:
        return (
            f"Knob(value={self.value}, level={self.level:.4g}, lo={self._level(0)}, "
            f"hi={self.top}, step={self.step:g}, policy={self.policy!r}, band={self.band:g}, "
            f"reversals={self.reversals})"
        )
