"""The NRG-loops: adapted (``nrg_adapt`` / ``nrg_alternate``), truncated and
perforated loops.

The per-iteration path counts the iteration and reads one flag the last
tick set (run the full body or the alternate): no hardware read, no lock, no
clock.  Everything else -- starting the sampler, reading the windowed power
the sampler thread published, following a cap changed at run time, moving a
knob and spreading its mix, the timeline, pulling the power series for the
report -- happens at *ticks*: every ``stride`` iterations, where the stride
adapts so that ticks come about every ``TICK_S`` seconds (and at every
iteration when iterations are slower than that).

An adapted function without a knob holds the cap by mixing its two bodies:
the share of full-body iterations is a mixed level between the alternate
(0) and the full body (1), controlled like a ``Knob(0, 1, 1)`` (policy
"mix", see ``nrgloops.control``): a cap between the two bodies' powers is
held on average, by time-division, without the overshoot of switching on
each window.  With a knob and an alternate, the alternate runs while the
knob is at its bottom level and the power is still over the cap.

A windowed power of NaN (a stale meter) is unknown: the loop degrades (the
knob's bottom level, the alternate; perforate skips) and warns once.  Its
ticks count the seconds of unknown power and the iterations that ran
degraded meanwhile, for the report (``stale_s``, ``stale_iterations``).

Counts are plain ``+= 1`` on the loop object: exact under the GIL (no
thread switch can fall between the read and the write of an int attribute),
not on a free-threaded build when one adapted function is called from
several threads at once.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
import types
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

from nrgloops import _forksafe
from nrgloops._errors import NrgError
from nrgloops._ffi import ffi, lib
from nrgloops._origin import user_stacklevel
from nrgloops.carbon import J_PER_KWH, CarbonBudget
from nrgloops.constraints import EnergyBudget, PowerCap
from nrgloops.control import Knob
from nrgloops.report import Recorder, Report, Value, ring_history
from nrgloops.sampler import Sampler

__all__ = [
    "AdaptLoop",
    "AdaptedFunction",
    "PerforatedLoop",
    "TruncatedLoop",
    "nrg_adapt",
    "nrg_alternate",
    "perforate",
    "running_loops",
    "truncate",
]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")  # an adapted function's parameters: its calls are type-checked

TICK_S = 0.002  # aim: one tick every 2 ms (a clock read costs ~100 ns here)
MAX_STRIDE = 1 << 14
TRUNCATE_SAFETY = 4.0  # truncate holds its budget if an item costs up to 4x the usual

# What the hot path reads before a loop starts and after it stops: a zero
# power, so that nothing reads a sampler that is gone.
_IDLE = memoryview(bytearray(8 * lib.NRG_MAX_SLOTS)).cast("d")

_now = time.monotonic

# The loops running now, for the exporter (weak: a dropped loop leaves it).
_running: weakref.WeakSet[_Loop] = weakref.WeakSet()
# (a WeakSet cannot be iterated while another thread adds)
_running_lock = _forksafe.lock()


def running_loops() -> list[_Loop]:
    """The loops running now, oldest first."""
    with _running_lock:
        loops = list(_running)
    return sorted(loops, key=lambda loop: loop._t0)


def _forget_in_child() -> None:
    # A forked child (multiprocessing's default start on Linux) holds copies
    # of the parent's adapted functions: each starts a loop of its own there.
    # (Truncated, perforated and `with` loops are left alone: a child that
    # goes on iterating one goes on with its copy.)  The locks are unlocked
    # again already (nrgloops._forksafe's hook runs first).
    for loop in list(_running):
        if isinstance(loop, AdaptedFunction):
            _running.discard(loop)
            loop._forget()


os.register_at_fork(after_in_child=_forget_in_child)


def _check_constraint(cap: Any, name: str, kind: type) -> None:
    if not isinstance(cap, kind):
        raise TypeError(f"{name} must be a nrgloops.{kind.__name__}, not {type(cap).__name__}")


class _Loop:
    """What every loop shares: the sampler handle, ticks, and the report."""

    kind = "adapt"
    # The hot path's attributes are slots: the fastest attribute access
    # whatever else lands in the instance's __dict__.
    __slots__ = (
        "_n",
        "_m",
        "_next_tick",
        "_pub",
        "_slot",
        "_limit",
        "_full",
        "__dict__",
        "__weakref__",
    )

    def __init__(
        self,
        constraint: PowerCap | EnergyBudget | CarbonBudget,
        knob: Knob[Any] | None,
        name: str = "",
    ) -> None:
        self._constraint = constraint
        self._meter = constraint.meter
        self._window = constraint.window
        self._domain = constraint.domain
        self._limit = constraint.watts if isinstance(constraint, PowerCap) else math.inf
        if knob is not None and not isinstance(knob, Knob):
            raise TypeError(f"knob must be a nrgloops.Knob or None, not {type(knob).__name__}")
        self.knob = knob
        self.name = name
        self._full = True  # the hot path: run the full body (set at ticks)
        # without a knob, an adapted loop mixes its two bodies: a 2-level knob
        self._share: Knob[Any] | None = None
        if knob is None and self.kind == "adapt":
            self._share = Knob(0, 1, 1)
            self._share._bottom_text = "the alternate (degraded) body"
        self._lock = _forksafe.rlock()
        self._sampler: Sampler | None = None
        self._pub: Any = _IDLE
        self._slot = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._report: Report | None = None
        self._rec: Recorder | None = None
        self._t0 = self._t_end = 0.0
        self._first = self._last = (0.0, 0.0)  # (time, joules) of sampler rows
        self._col = len(self._meter.domains)  # the ring's column: the total...
        if self._domain is not None:  # ...or one domain
            self._col = self._meter.domain_index(self._domain)
        self._row_t = ffi.new("double *")
        self._row_j = ffi.new("double[]", lib.NRG_MAX_DOMAINS + 1)
        self._tick_s = TICK_S
        if knob is not None:
            dwell = knob.dwell if knob.dwell is not None else self._window
            self._tick_s = min(TICK_S, dwell / 4.0)  # dwell 0: tick at every iteration
        self._reset_counters()
        self._stale_s, self._stale_n = 0.0, 0
        self._stale_since, self._stale_mark = math.nan, 0
        self._stale_warned = False

    def _reset_counters(self) -> None:
        self._n = 0  # iterations
        self._m = 0  # of which ran the alternate
        self._next_tick = 0  # the first iteration ticks, which starts the loop
        self._stride = 1
        self._tick_t = 0.0
        self._tick_i = 0

    # -- lifetime --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._sampler is not None

    def _start(self) -> None:
        # (the sampler is shared per (meter, period, history): ask no more
        # history than needed, so that loops share the meter's default ring)
        sampler = Sampler(self._meter, history=ring_history(self._window)).start()
        try:
            self._slot = sampler.watch(self._window, self._domain)
            self._pub = sampler.published
        except BaseException:
            sampler.stop()
            raise
        self._finalizer = weakref.finalize(self, sampler.stop)
        self._sampler = sampler
        self._install()
        self._first = self._last = self._row(sampler)
        self._t0 = self._tick_t = _now()
        if isinstance(self._constraint, PowerCap):
            self._limit = self._constraint.watts
        self._full = True
        for ctl in (self.knob, self._share):
            if ctl is not None:
                ctl._begin(self._t0)
        cap = self._limit if self._limit != math.inf else None
        self._rec = Recorder(sampler, self._window, self._domain, cap, self._t0)
        self._report = None
        # stale meter: seconds of unknown power, iterations degraded meanwhile,
        # and the open stretch (its start, NaN when none; the degraded count then)
        self._stale_s, self._stale_n = 0.0, 0
        self._stale_since, self._stale_mark = math.nan, 0
        with _running_lock:
            _running.add(self)

    def _stop(self) -> None:
        with self._lock:
            sampler = self._sampler
            if sampler is None:
                return
            try:
                self._t_end = _now()
                self._last = self._row(sampler)
                assert self._rec is not None
                self._rec.pull(self._t_end)
                self._report = self._build(running=False)
            finally:
                with _running_lock:
                    _running.discard(self)
                self._pub = _IDLE
                self._install()
                self._sampler = None
                if self._finalizer is not None:
                    self._finalizer.detach()
                    self._finalizer = None
                self._reset_counters()  # a later iteration starts a new loop
                sampler.stop()

    # -- ticks -----------------------------------------------------------
    def _tick(self) -> None:
        """Off the hot path: every ``stride`` iterations."""
        with self._lock:
            i = self._n
            if i < self._next_tick:
                return  # another thread just ticked
            if self._sampler is None:
                self._first_call()
                # this call is the new loop's first iteration (calls that
                # raised before it started do not count)
                self._n, self._m = 1, 0
                self._next_tick = 2
                self._tick_i = 1
                return
            now = _now()
            self._retune(i, now)
            self._on_tick(now)

    def _first_call(self) -> None:
        self._start()

    def _install(self) -> None:
        """Called when what the hot path reads changes."""

    def _retune(self, i: int, now: float) -> None:
        dt = now - self._tick_t
        n = i - self._tick_i
        stride = self._stride
        if dt > 0 and n > 0:
            want = int(n * self._tick_s / dt)
            # grow slowly (a sudden slowdown costs at most 2x), shrink at once
            stride = max(1, min(want, 2 * stride, MAX_STRIDE))
        self._stride = stride
        self._next_tick = i + stride
        self._tick_t, self._tick_i = now, i

    def _degraded(self) -> int:
        """Iterations so far that a stale power degrades: with a knob every one
        (its bottom level, or the alternate), else the alternate's."""
        return self._n if self.knob is not None else self._m

    def _stale_tick(self, now: float, stale: bool) -> None:
        """Book the stretch of unknown power this tick ends, or starts."""
        if self._stale_since == self._stale_since:  # a stretch is open
            d = self._degraded()
            self._stale_n += d - self._stale_mark  # these ran with the flag of a stale tick
            self._stale_mark = d
            if not stale:
                self._stale_s += now - self._stale_since
                self._stale_since = math.nan
        elif stale:
            self._stale_since, self._stale_mark = now, self._degraded()
            if self.knob is None and self._share is None and not self._stale_warned:
                # (a knob or a share warns itself; truncate and perforate have neither)
                self._stale_warned = True
                what = (
                    "its energy stops growing, so the budget cannot end it meanwhile"
                    if self.kind == "truncate"
                    else "items are skipped meanwhile"
                )
                warnings.warn(
                    f"{self.kind} loop: the {self._meter.kind} meter has had no good sample "
                    f"for several periods, so the power is unknown: {what}; the report's "
                    "stale_s says for how long",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )

    def _stale_so_far(self, now: float) -> tuple[float, int]:
        """(seconds of unknown power, iterations degraded meanwhile) up to ``now``."""
        if self._stale_since != self._stale_since:
            return self._stale_s, self._stale_n
        return (
            self._stale_s + max(now - self._stale_since, 0.0),
            self._stale_n + self._degraded() - self._stale_mark,
        )

    def _on_tick(self, now: float) -> None:
        power = self._pub[self._slot]
        if power != power or self._stale_since == self._stale_since:
            self._stale_tick(now, power != power)  # (NaN: a stale meter)
        sampler = self._sampler
        if power == 0.0 and sampler is not None and sampler.samples < 2:
            return  # a fresh sampler publishes 0 W until its second row: not a power
        rec = self._rec
        assert rec is not None
        c = self._constraint
        if isinstance(c, PowerCap) and c.watts != self._limit:
            rec.pull(now)  # the time so far counts against the old cap
            self._limit = rec.cap = c.watts
        knob = self.knob
        # (_tick: these numbers are the sampler's, not the user's input)
        if knob is not None:
            knob._tick(power, self._limit, now, self._window)
            # the alternate: the whole mix at the bottom and still over (or NaN)
            self._full = knob._x > 0 or power <= self._limit
        elif self._share is not None:
            self._share._tick(power, self._limit, now, self._window)
            self._full = self._share._index == 1
        rec.mark(now, power, self._value(power))
        if now - rec.pulled >= rec.pull_every:
            rec.pull(now)

    def _value(self, power: float) -> Value:
        if self.knob is not None:
            return self.knob.level  # the real level (the grid one changes every tick)
        return "adapt" if self._full else "alternate"

    @property
    def demand_w(self) -> float:
        """The learned power at full speed, W: the knob's top level, or the
        full body on every iteration; NaN until the loop has learned it."""
        if self.knob is not None:
            return self.knob.predict(self.knob.top)
        if self._share is not None:
            return self._share.predict(1)
        return math.nan

    # -- report ----------------------------------------------------------
    def _row(self, sampler: Sampler) -> tuple[float, float]:
        """(time, cumulative joules) of the sampler's latest row."""
        lib.nrg_sampler_latest(sampler._ptr(), self._row_t, self._row_j)
        return (self._row_t[0], self._row_j[self._col])

    def _iterations(self) -> dict[str, int | None]:
        n, m = self._n, self._m
        return {"adapt": n - m, "alternate": m}

    def _build(self, running: bool) -> Report:
        rec = self._rec
        assert rec is not None
        knob = self.knob
        ctl = knob if knob is not None else self._share
        c = self._constraint
        stale_s, stale_n = self._stale_so_far(self._t_end)
        bound = ctl.bound if ctl is not None and isinstance(c, PowerCap) else None
        if bound is False and stale_s > 0:
            bound = None  # it ran degraded for want of a power: not "full speed all along"
        return rec.report(
            self._first,
            self._last,
            meter=self._meter,
            period=self._sampler.period if self._sampler is not None else math.nan,
            kind=self.kind,
            iterations=self._iterations(),
            duration_s=max(self._t_end - self._t0, 0.0),
            cap_w=c.watts if isinstance(c, PowerCap) else None,
            budget_j=c.joules if isinstance(c, EnergyBudget) else None,
            knob=knob.state() if knob is not None else None,
            running=running,
            name=self.name,
            cap_unreachable_w=ctl.unreachable_w if ctl is not None else None,
            cap_bound=bound,
            stale_s=stale_s,
            stale_iterations=stale_n,
        )

    @property
    def report(self) -> Report:
        """The loop's report: final once the loop is over, else a snapshot."""
        with self._lock:
            sampler = self._sampler
            if sampler is None:
                if self._report is None:
                    raise NrgError("this loop has not started yet: no report")
                return self._report
            self._t_end = _now()
            self._last = self._row(sampler)
            assert self._rec is not None
            self._rec.pull(self._t_end)
            return self._build(running=True)

    @property
    def power(self) -> float:
        """The windowed power now, W (0 when the loop is not running)."""
        return float(self._pub[self._slot])


# ---------------------------------------------------------------------------
# adapted loops


class AdaptLoop(_Loop):
    """The context-manager form of ``nrg_adapt``::

        with nrg_adapt(cap) as loop:
            for s in strings:
                if loop.under_cap: full(s)
                else: degraded(s)

    Reading ``under_cap`` (or calling ``step()``) is one iteration: it counts
    the variant and moves the knob.  ``@nrg_adapt(cap)`` on a function makes
    an ``AdaptedFunction``.
    """

    def __init__(self, cap: PowerCap, knob: Knob[Any] | None = None) -> None:
        _check_constraint(cap, "cap", PowerCap)
        super().__init__(cap, knob)
        self.cap = cap

    def __call__(self, body: Callable[P, R]) -> AdaptedFunction[P, R]:
        return AdaptedFunction(self.cap, body, knob=self.knob)

    def __enter__(self) -> AdaptLoop:
        with self._lock:
            if self._sampler is not None:
                raise NrgError("this nrg_adapt loop is already running; make one per `with`")
            self._reset_counters()
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def step(self) -> bool:
        """One iteration: True to run the full body (under the cap), False
        for the degraded one."""
        self._n += 1
        if self._n >= self._next_tick:
            self._tick()
        if self._full:
            return True
        self._m += 1
        return False

    under_cap = property(step, doc="One iteration: True to run the full body.")

    def _first_call(self) -> None:
        raise NrgError("use `with nrg_adapt(cap) as loop:` before reading loop.under_cap")

    def _iterations(self) -> dict[str, int | None]:
        if self.knob is None:
            return super()._iterations()
        # with a knob, step() is False when the knob is at its bottom and the
        # power still over the cap: whether a degraded body ran is the caller's
        n, m = self._n, self._m
        return {"adapt": n - m, "over_cap_at_bottom": m}


class AdaptedFunction(_Loop, Generic[P, R]):
    """A function adapted to a power cap (made by ``@nrg_adapt(cap)``).

    Each call is one iteration: it runs the function while the windowed
    power is <= the cap, else its alternate (``@nrg_alternate(f)`` or
    ``@f.alternate``), and returns what that returns.  The loop starts at the
    first call (or at ``with f:``) and ends at ``f.close()`` (or the end of
    the ``with``); a call after that starts a new loop.  ``f.report`` is the
    current or last loop's report.
    """

    __slots__ = ("_body", "_else")

    def __new__(
        cls, cap: PowerCap, body: Callable[P, R], knob: Knob[Any] | None = None
    ) -> AdaptedFunction[P, R]:
        # Each adapted function gets its own class, whose __call__ has the
        # body's signature (calls cost ~100 ns less than with *args, **kwargs).
        sub = type(cls.__name__, (cls,), {"__slots__": ()})
        return super().__new__(sub)

    def __init__(self, cap: PowerCap, body: Callable[P, R], knob: Knob[Any] | None = None) -> None:
        _check_constraint(cap, "cap", PowerCap)
        if not callable(body):
            raise TypeError(f"body must be callable, not {type(body).__name__}")
        name = getattr(body, "__qualname__", getattr(body, "__name__", repr(body)))
        super().__init__(cap, knob, name=name)
        self.cap = cap
        self._body = body
        self._alternate: Callable[P, R] | None = None
        self._else: Callable[P, R] = body  # what runs over the cap
        functools.update_wrapper(self, body)
        self._specialise()

    def _specialise(self) -> None:
        self._make = _make_call(self._body, self._alternate is not None)
        self._install()

    def _install(self) -> None:
        # a new hot path with what it reads now (at the start and end of
        # each loop, and when an alternate is registered)
        call = self._make(self._body, self._else)
        type(self).__call__ = call  # type: ignore[method-assign]

    def alternate(self, body: Callable[P, R]) -> Callable[P, R]:
        """Register the degraded variant (use as a decorator); returns it unchanged."""
        if not callable(body):
            raise TypeError(f"the alternate body must be callable, not {type(body).__name__}")
        with self._lock:
            if self._alternate is not None:
                raise ValueError(
                    f"{self.name} already has an alternate ({self._alternate!r}); "
                    "at most one alternate per adapted function"
                )
            self._alternate = self._else = body
            self._specialise()
        return body

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        # Replaced per instance by a copy with the body's own signature (see
        # _specialise): forwarding *args, **kwargs costs ~100 ns a call.
        self._n += 1
        if self._n >= self._next_tick:
            self._tick()
        if self._full:
            return self._body(*args, **kwargs)
        self._m += 1
        return self._else(*args, **kwargs)

    def _first_call(self) -> None:
        if self._alternate is None and self.knob is None:
            raise NrgError(
                f"{self.name} has no alternate to run over the cap: register one with "
                f"@nrgloops.nrg_alternate({self.name}) or @{self.name}.alternate, "
                "or give nrg_adapt a knob="
            )
        self._start()

    def close(self) -> None:
        """End the loop: stop its sampler, freeze its report."""
        self._stop()

    def _iterations(self) -> dict[str, int | None]:
        if self._alternate is None:  # a knob only: every call ran the body
            return {"adapt": self._n}
        return super()._iterations()

    def __enter__(self) -> AdaptedFunction[P, R]:
        with self._lock:
            if self._sampler is None:
                self._reset_counters()
                self._first_call()
                self._tick_i = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        # so that an adapted method gets its self
        return self if obj is None else types.MethodType(self, obj)

    def __reduce__(self) -> str:
        # Pickled by reference, like the function it adapts: the process that
        # unpickles it uses its own copy from the module, with its own loop
        # (multiprocessing.Pool.map(adapted, ...) works; a local one fails
        # to pickle as a local function does).
        return self.name  # the body's __qualname__

    def _forget(self) -> None:
        """In a forked child: let go of the parent's running loop (its sampler
        runs on in the child, unused); the child's next call starts its own."""
        self._sampler = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._pub = _IDLE
        self._full = True
        self._report = None
        self._reset_counters()
        self._install()

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        return f"<adapted {self.name} under {self.cap!r}, {state}>"


# The hot path of an adapted function.  What does not change while a loop
# runs (the two bodies) sits in closure cells, which Python reads faster than
# attributes (~40 ns a call); the counters and the flag stay on the object,
# where the ticks update them.
_TEMPLATE = """\
def _nrg_make(B{x}, E{x}):
    def __call__({params}):
        {s}._n += 1
        if {s}._n >= {s}._next_tick:
            {s}._tick()
{tail}
    return __call__
"""
_BODY_ONLY = """\
        return B{x}({args})"""
_BODY_OR_ALTERNATE = """\
        if {s}._full:
            return B{x}({args})
        {s}._m += 1
        return E{x}({args})"""

_Factory = Callable[[Callable[..., Any], Callable[..., Any]], Callable[..., Any]]


def _make_call(body: Callable[..., Any], with_alternate: bool) -> _Factory:
    """A factory of the hot path of an adapted function, compiled with the
    body's parameters (defaults are the body's own objects), else *args,
    **kwargs: forwarding those costs ~100 ns a call."""
    params, args = ["*args", "**kwargs"], ["*args", "**kwargs"]
    env: dict[str, Any] = {}
    try:
        sig: inspect.Signature | None = inspect.signature(body)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        P = inspect.Parameter
        params, args = [], []
        prev = None
        for k, p in enumerate(sig.parameters.values()):
            if prev is P.POSITIONAL_ONLY and p.kind is not P.POSITIONAL_ONLY:
                params.append("/")
            if p.kind is P.KEYWORD_ONLY and prev not in (P.KEYWORD_ONLY, P.VAR_POSITIONAL):
                params.append("*")
            text = p.name
            if p.kind is P.VAR_POSITIONAL:
                text = args_text = "*" + p.name
            elif p.kind is P.VAR_KEYWORD:
                text = args_text = "**" + p.name
            elif p.kind is P.KEYWORD_ONLY:
                args_text = f"{p.name}={p.name}"
            else:
                args_text = p.name
            if p.default is not P.empty:
                env[f"_nrg_default{k}"] = p.default
                text += f"=_nrg_default{k}"
            params.append(text)
            args.append(args_text)
            prev = p.kind
        if prev is P.POSITIONAL_ONLY:
            params.append("/")
    names = set(sig.parameters) if sig is not None else {"args", "kwargs"}
    x = "_nrg"  # a suffix that no parameter's name collides with
    while names & ({f"{v}{x}" for v in "BE"} | {"_nrg_self" + x}):
        x += "_"
    s = "_nrg_self" + x
    tail = (_BODY_OR_ALTERNATE if with_alternate else _BODY_ONLY).format(
        x=x, s=s, args=", ".join(args)
    )
    code = _TEMPLATE.format(x=x, s=s, params=", ".join([s, *params]), tail=tail)
    exec(compile(code, f"<nrgloops adapted {getattr(body, '__name__', 'body')}>", "exec"), env)
    make: _Factory = env["_nrg_make"]
    return make


def nrg_adapt(cap: PowerCap, knob: Knob[Any] | None = None) -> AdaptLoop:
    """An adapted loop under a power cap: a decorator or a context manager.

    As a decorator, ``@nrg_adapt(cap)`` makes each call of the function one
    iteration that runs the function while the windowed power is <= the cap,
    else its alternate (register it with ``@nrg_alternate(f)`` or
    ``@f.alternate``).  As a context manager, ``with nrg_adapt(cap) as loop``
    gives ``loop.under_cap`` (True: run the full body).  With ``knob=`` the
    library also moves the knob's level to hold the cap (then the alternate
    is optional).
    """
    return AdaptLoop(cap, knob)


def nrg_alternate(
    adapted: AdaptedFunction[P, R],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register the decorated function as the degraded variant of ``adapted``."""
    if not isinstance(adapted, AdaptedFunction):
        raise TypeError(
            f"nrg_alternate takes a function made by @nrg_adapt(cap), not {type(adapted).__name__}"
        )
    return adapted.alternate


# ---------------------------------------------------------------------------
# truncated and perforated loops


class _ItemsLoop(_Loop, Generic[T]):
    """A loop over items that yields some of them (truncate, perforate)."""

    def __init__(
        self, items: Iterable[T], constraint: PowerCap | EnergyBudget | CarbonBudget, what: str
    ) -> None:
        try:
            self._items: Iterator[T] = iter(items)
        except TypeError:
            raise TypeError(f"items must be iterable, not {type(items).__name__}") from None
        super().__init__(constraint, None, name=what)
        try:
            self._len: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self._len = None
        self._ran = self._skipped = 0
        self._done = False
        # weak: a `break` out of the for loop must free (and so close) the
        # generator at once, which ends the loop
        self._gen: weakref.ref[Generator[T, None, None]] | None = None

    def __iter__(self) -> Generator[T, None, None]:
        if self._gen is not None:
            raise NrgError(f"this {self.kind} loop was already iterated; make a new one")
        gen = self._run()
        self._gen = weakref.ref(gen)
        return gen

    def __enter__(self) -> _ItemsLoop[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        gen = self._gen() if self._gen is not None else None
        if gen is not None:
            gen.close()
        self._stop()

    def _iterations(self) -> dict[str, int | None]:
        left = None if self._len is None else self._len - self._ran - self._skipped
        return {"ran": self._ran, "skipped": self._skipped, "left": left}

    def _run(self) -> Generator[T, None, None]:
        raise NotImplementedError

    def _sync(self, i: int, ran: int, skipped: int) -> None:
        # counts live in the generator's locals (fast); the report reads these
        self._ran, self._skipped = ran, skipped
        with self._lock:
            now = _now()
            self._retune(i, now)
            self._on_tick(now)


class TruncatedLoop(_ItemsLoop[T]):
    """``truncate(items, budget)``: yields items until the energy used since
    the loop started reaches the budget (an EnergyBudget), or the emissions
    do (a CarbonBudget: each stretch of energy at the intensity when counted)."""

    kind = "truncate"

    def __init__(self, items: Iterable[T], budget: EnergyBudget | CarbonBudget) -> None:
        if not isinstance(budget, (EnergyBudget, CarbonBudget)):
            raise TypeError(
                "budget must be a nrgloops.EnergyBudget or a nrgloops.CarbonBudget, "
                f"not {type(budget).__name__}"
            )
        super().__init__(items, budget, "truncate")
        self.budget = budget
        self._grams = 0.0  # emitted so far (a CarbonBudget), g
        self._e_counted = 0.0  # the sampler energy the grams count up to, J

    def _charge(self, e: float) -> float:
        """Count the grams of the energy up to ``e`` (J, sampler count) at the
        intensity now; returns the intensity in g/J."""
        assert isinstance(self.budget, CarbonBudget)
        g_per_j = self.budget.intensity.at(time.time()) / J_PER_KWH
        self._grams += (e - self._e_counted) * g_per_j
        self._e_counted = e
        return g_per_j

    def _build(self, running: bool) -> Report:
        r = super()._build(running)
        b = self.budget
        if isinstance(b, CarbonBudget):
            r.budget_g = b.grams
            missing = not math.isfinite(r.energy_j)
            r.carbon_g = math.nan if missing else self._grams
            kwh = r.energy_j / J_PER_KWH if not missing else math.nan
            r.intensity = {
                "source": b.intensity.source,
                "kind": b.intensity.kind,
                "mean_g_per_kwh": self._grams / kwh if kwh and kwh > 0 else math.nan,
            }
        return r

    def _value(self, power: float) -> Value:
        s = self._sampler
        return s.energy(self._domain) if s is not None else None

    def _degraded(self) -> int:
        return 0  # (a truncated loop has no degraded variant)

    def _run(self) -> Generator[T, None, None]:
        with self._lock:
            self._start()
        assert self._sampler is not None
        ptr = self._sampler._ptr()
        col = self._meter.domain_index(self._domain)
        energy = lib.nrg_sampler_energy  # lock-free read of the ring, ~100 ns
        e_last = e0 = energy(ptr, col)
        budget = self.budget
        carbon = isinstance(budget, CarbonBudget)
        self._grams, self._e_counted = 0.0, e0
        stop_at = math.inf
        ran = ran_last = check = 0
        try:
            for item in self._items:
                if ran >= check:
                    e = energy(ptr, col)
                    # (the budget may change at run time)
                    if isinstance(budget, CarbonBudget):
                        # the energy the grams left buy at the intensity now
                        g_per_j = self._charge(e)
                        left = budget.grams - self._grams
                        stop_at = e + left / g_per_j if g_per_j > 0 else math.inf
                        if left <= 0:
                            break
                    else:
                        stop_at = budget.joules + e0
                    if e >= stop_at:
                        break
                    if ran >= self._next_tick:
                        self._sync(ran, ran, 0)
                    # Read the energy again before the budget can run out at
                    # TRUNCATE_SAFETY times the energy per item seen so far
                    # (overall or lately): reads get denser near the end, and
                    # the last ones are at every item.
                    per_item = max(
                        (e - e0) / ran if ran else 0.0,
                        (e - e_last) / (ran - ran_last) if ran > ran_last else 0.0,
                    )
                    ahead = 1
                    if per_item > 0 and stop_at == math.inf:
                        ahead = MAX_STRIDE  # free energy (0 g/kWh): check again at ticks
                    elif per_item > 0:
                        ahead = max(1, int((stop_at - e) / (TRUNCATE_SAFETY * per_item)))
                    check = min(ran + ahead, self._next_tick)
                    e_last, ran_last = e, ran
                ran += 1
                yield item
        finally:
            self._ran = ran
            if carbon and self._sampler is not None:
                self._charge(energy(ptr, col))  # the last stretch
            self._stop()


class PerforatedLoop(_ItemsLoop[T]):
    """``perforate(items, cap, rate)``: skips a share ``rate`` of the items,
    evenly spread, while the windowed power is over the cap."""

    kind = "perforate"

    def __init__(self, items: Iterable[T], cap: PowerCap, rate: float = 0.5) -> None:
        _check_constraint(cap, "cap", PowerCap)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(f"rate must be a number in [0, 1), not {type(rate).__name__}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be a share of the items in [0, 1), got {rate!r}")
        super().__init__(items, cap, "perforate")
        self.cap = cap
        self.rate = float(rate)

    def _value(self, power: float) -> Value:
        return "run" if power <= self._limit else "skip"

    def _degraded(self) -> int:
        return self._skipped

    def _run(self) -> Generator[T, None, None]:
        with self._lock:
            self._start()
        pub, slot, limit, rate = self._pub, self._slot, self._limit, self.rate
        ran = skipped = i = next_tick = 0
        acc = 0.0
        try:
            for item in self._items:
                if i >= next_tick:
                    self._sync(i, ran, skipped)
                    next_tick = self._next_tick
                    pub, limit = self._pub, self._limit  # (the cap may change at run time)
                i += 1
                if not pub[slot] <= limit:  # (NaN, a stale meter: skip too)
                    # an accumulator spreads the skips evenly: rate 0.25
                    # skips every 4th item, 0.5 every other one
                    acc += rate
                    if acc >= 1.0:
                        acc -= 1.0
                        skipped += 1
                        continue
                ran += 1
                yield item
        finally:
            self._ran, self._skipped = ran, skipped
            self._stop()


def truncate(items: Iterable[T], budget: EnergyBudget | CarbonBudget) -> TruncatedLoop[T]:
    """Iterate ``items`` until ``budget.joules`` have been used since the loop
    started (or ``budget.grams`` of CO2eq emitted, for a CarbonBudget);
    ``.report`` says how many ran and how many were left."""
    return TruncatedLoop(items, budget)


def perforate(items: Iterable[T], cap: PowerCap, rate: float = 0.5) -> PerforatedLoop[T]:
    """Iterate ``items``, skipping a share ``rate`` of them (evenly spread,
    deterministic) while the windowed power is over ``cap``; ``.report``
    counts the skipped ones."""
    return PerforatedLoop(items, cap, rate)
