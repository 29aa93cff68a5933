"""One power budget for a fleet of NRG-loops on Ray: a keeper of watts, leases, slack moved.

An extra (``pip install "nrgloops[ray]"``): the core never imports this module, and
this module imports Ray only when a keeper is started or a share is taken::

    import ray
    from nrgloops import Knob, nrg_adapt
    from nrgloops.cluster import LeasedCap, PowerBudget

    ray.init()                                  # ray.init(address="auto") on a cluster
    budget = PowerBudget(400, name="rack-7")    # the keeper: a named Ray actor

    @ray.remote
    def work(items):
        cap = LeasedCap("rack-7")               # this worker's share of the 400 W
        knob = Knob(1, 8, 1)
        step = nrg_adapt(cap, knob=knob)(lambda item: run(item, threads=knob.value))
        cap.follow(step)                        # report the loop's demand at renewals
        with cap, step:
            for item in items:
                step(item)

Leases
------
The keeper (:class:`PowerBudget`, one Ray actor taking no CPU) holds the total in
watts.  Each worker holds a *lease*: a share in watts, valid ``expiry`` seconds (three
periods by default).  A :class:`LeasedCap` is a :class:`~nrgloops.PowerCap` whose
``watts`` follow the lease; a background thread renews it every ``period`` (1 s by
default) -- at once when the worker's demand moves by 10% -- and the worker's loop
follows the new watts from its next tick.

- A lease that is not renewed expires on the keeper's clock and its watts go back to
  the pool: a dead or hung worker keeps nothing but its floor (below), and that only
  until it has been silent for ``forget`` seconds.
- A worker that cannot reach the keeper keeps its last share and shrinks it, linearly,
  to its floor by the time the lease expires (its own clock: the lease is counted from
  when the renewal was *sent*, so it ends no later than the keeper thinks).  It never
  goes above its last share, and it keeps trying; the first answer puts it back.
- A lowered share stays booked at its old value until the worker acknowledges it
  (it does so as soon as it applies it) or the old lease expires, so that a reply
  lost on the way can never let two workers count the same watts.  So the leases
  never sum above the total: ``sum(reserved) <= watts`` at every instant.
- A keeper that restarts (Ray restarts the actor; its state is gone) first waits one
  expiry: in that time a worker renewing a lease of the keeper's previous life is
  granted no more than it holds, and new workers wait.  Every lease of the previous
  life has expired by then, so no worker can exceed its last share and the watts
  in force never grow while the keeper does not know them.

Redistribution
--------------
At every renewal the worker reports what it drew over the last period (its meter)
and its *demand*: what it would draw at full speed (``loop.demand_w``, the knob
model's prediction at the top level; or a number or function the user gives).  The
keeper then computes every worker's target by weighted water-filling::

    share_i = clamp(level * weight_i, floor_i, want_i),   sum(share_i) = watts

with ``want_i = demand_i * (1 + headroom)``: every worker gets at least its floor;
a worker whose demand is under the common level gets what it asks for (plus a small
headroom, so that a growing demand shows in the next report), and what it leaves --
its slack -- is split among the workers still capped, by weight.  Watts nobody asks
for stay in the pool (a new worker gets them at once; when capped workers hold all of
it, a new worker waits for its first lease until they have shrunk: about a period).
When a worker's demand is not known yet, Slurm's rule is the fallback: drawing under
``lower`` (90%) of its lease it wants what it draws (plus headroom), over ``upper``
(95%) it wants all it can get, in between it keeps its lease.  ``policy="even"``
ignores demands (an even split by weight: the baseline of ``benchmarks/cluster.py``).
A target is granted at the worker's next renewal, within what the other workers'
leases leave free.  A worker whose demand drops renews at once and acknowledges its
lower lease as soon as it has applied it, so its slack is in the others' leases at
their next renewals: within about one period (a few knob windows more for the knob's
model to see the drop; measured: 0.8-1.4 periods in ``benchmarks/cluster.py``).

Energy
------
``PowerBudget(watts, joules=J)`` adds an energy pool for truncated loops:
``truncate(items, cap.energy)`` stops when this worker's allowance is spent.  At each
renewal the allowance is topped up to what the worker used plus what its lease would
use over ``expiry + period``, while the pool lasts; the allowances never sum above
``joules``.  A worker that leaves (``close()``) gives back what it did not use; a dead
one's allowance stays spent (the keeper cannot know what it used), and a restarted
keeper, which does not know what the fleet used before, grants no more energy.

How it relates to the system-level balancers
--------------------------------------------
GEOPM's ``power_balancer`` agent starts from an even split of the job's budget, has
every node find the least power at which it still keeps pace with the slowest node
(by epoch run time), sends that slack up the tree and spreads it evenly over the nodes
at the next step, every control period.  Slurm's power plugin (``power/cray_aries``)
starts even too and every ``balance_interval`` (30 s) lowers the cap of a node using
under ``lower_threshold`` (90%) of it and raises one using over ``upper_threshold``
(95%).  Both move hardware limits (RAPL) and need privileges, and both must *find*
each node's need by trial.  Here the need is *reported*: each loop's knob has learnt
its power per level, so the keeper moves slack in one step, at renewal pace (1 s,
not 30 s); each worker then holds its share from inside, choosing what to give up.
Slurm's thresholds are the fallback when no model is available.  Unlike GEOPM, the
keeper does not equalise progress between workers (it does not know their work rates):
``weight`` is how a user says one worker's watts buy more than another's.

Limits
------
Where ``sum(reserved) <= watts`` is not the whole truth: after ``budget.watts`` is
lowered, the leases come down at each worker's next renewal (within a period); a
worker silent for longer than ``forget`` but alive draws its floor unaccounted until
it reaches the keeper again, and so does one that a restarted keeper did not hear
from during its warm-up.  Leases are timed on each side's own monotonic clock (only
durations cross machines: no clock needs to agree with another).  A share is held
against the worker's own meter: one worker per node (RAPL measures the whole
package) or per GPU (``meter=open_meter("nvml", index=i)``); workers sharing one
package would each see all of its power.

``PowerBudget(...)`` works the same on one machine (``ray.init()``) and on a cluster
(``ray.init(address=...)``): the keeper is found by its name, Ray carries the calls.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from nrgloops import _checks, _forksafe
from nrgloops._errors import NrgError
from nrgloops.constraints import EnergyBudget, PowerCap
from nrgloops.meters import Meter

__all__ = ["POLICIES", "LeaseState", "LeasedCap", "PowerBudget"]

POLICIES = ("balance", "even")
DEFAULT_NAME = "nrgloops-budget"
DEFAULT_PERIOD_S = 1.0
EXPIRY_PERIODS = 3.0  # a lease lives three periods: one lost renewal costs nothing
FORGET_EXPIRIES = 20.0  # a silent worker's floor stays booked this many expiries
LOWER, UPPER = 0.90, 0.95  # Slurm's thresholds, for workers that report no demand
_EPS = 1e-9  # watts: what float sums may be off by
_TINY_J = 1e-9  # an allowance of nothing (an EnergyBudget must be > 0 J)
CHECKS_PER_PERIOD = 4  # how often a lease's thread looks at the demand, per period
DEMAND_MOVE = 0.10  # a demand that moved by 10% is renewed at once


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            'nrgloops.cluster needs Ray: pip install "nrgloops[ray]" (or pip install ray)'
        ) from None
    return ray


def _demand(name: str, value: Any) -> float:
    """A demand in watts: >= 0, or NaN for "not known yet"."""
    if isinstance(value, float) and math.isnan(value):
        return math.nan
    return _checks.number(name, value, "watts", lo=0.0)


# ---------------------------------------------------------------------------
# the keeper's book: leases and the policy, with no Ray and no clock of its own


@dataclass
class _Worker:
    floor: float
    weight: float
    seen: float  # keeper's clock
    demand: float = math.nan
    drawn: float = math.nan
    want: float = math.inf  # what the policy gives it at most (from its last report)
    granted: float = 0.0  # the last lease sent, W (0: none yet)
    expires: float = -math.inf  # when that lease ends
    high: float = 0.0  # a higher lease the worker may still use (a lowering not acknowledged)
    high_until: float = -math.inf  # ...until then (the old lease's expiry)
    seq: int = -1
    allowed_j: float = 0.0  # joules it may use since it joined (the energy pool)
    used_j: float = math.nan  # joules it said it used

    def live(self, now: float) -> bool:
        return self.granted > 0 and now < self.expires

    def reserved(self, now: float) -> float:
        """Watts this worker may be using now, by its lease (or its floor when silent)."""
        if self.granted <= 0:
            return 0.0  # waiting for a first lease: holds nothing
        if now >= self.expires:
            return min(self.floor, self.granted)  # silent: shrunk to its floor
        if now < self.high_until:
            return max(self.granted, self.high)
        return self.granted


def _fill(lo: list[float], hi: list[float], w: list[float], avail: float) -> list[float]:
    """Weighted water-filling: ``clamp(level * w_i, lo_i, hi_i)`` summing to ``avail``
    (or every ``hi_i`` when they sum to less; floors scaled down when even they do not fit)."""
    if not lo:
        return []
    if sum(hi) <= avail:
        return list(hi)
    floors = sum(lo)
    if floors >= avail:
        return [x * avail / floors for x in lo] if floors > 0 else list(lo)

    def total(level: float) -> float:
        return sum(min(h, max(lo_i, level * w_i)) for lo_i, h, w_i in zip(lo, hi, w, strict=True))

    a, b = 0.0, avail / min(w)  # total(b) >= avail: the lightest weight alone gets it all
    for _ in range(200):
        m = 0.5 * (a + b)
        if total(m) <= avail:
            a = m
        else:
            b = m
        if b - a <= 1e-12 * b:
            break
    return [min(h, max(lo_i, a * w_i)) for lo_i, h, w_i in zip(lo, hi, w, strict=True)]


class _Ledger:
    """What the keeper knows and decides.  Times are the keeper's clock, passed in."""

    def __init__(
        self,
        watts: float,
        *,
        period: float,
        expiry: float,
        forget: float,
        headroom: float,
        policy: str,
        now: float,
        restarted: bool = False,
        joules: float | None = None,
        expect: int = 0,
    ) -> None:
        self.watts = watts
        # the fleet's size, when known: until that many workers have joined (or for
        # ``forget`` s), the ones missing keep an even share each in the pool
        self.expect = expect
        self.expect_until = now + forget
        self.joined: set[str] = set()
        self.joules = joules  # the energy pool, J (None: no energy budget)
        self.joules_left = math.inf if joules is None else joules
        if restarted and joules is not None:
            # what the fleet used before the restart is not known: grant no more
            # energy (workers keep the allowances they hold; held_j below)
            self.joules_left = 0.0
        self.period = period
        self.expiry = expiry
        self.forget = forget
        self.headroom = headroom
        self.policy = policy
        self.epoch = uuid.uuid4().hex
        self.warm_until = now + expiry if restarted else -math.inf
        self.workers: dict[str, _Worker] = {}

    # -- accounting --------------------------------------------------------
    def reserved(self, now: float, but: str | None = None) -> float:
        return sum(e.reserved(now) for k, e in self.workers.items() if k != but)

    def _tidy(self, now: float) -> None:
        for k, e in list(self.workers.items()):
            silent = now - e.seen
            if e.granted <= 0 and silent > self.expiry:
                del self.workers[k]  # a worker that waited for a first lease and went away
            elif silent >= self.forget and now >= e.expires:
                del self.workers[k]  # its floor goes back to the pool too

    def _want(self, e: _Worker) -> float:
        """From the worker's report, against the lease it drew under."""
        if self.policy == "even":
            return math.inf
        if e.demand == e.demand:  # known
            return max(e.floor, e.demand * (1.0 + self.headroom))
        if e.drawn == e.drawn and e.granted > 0:  # Slurm's rule
            if e.drawn < LOWER * e.granted:
                return max(e.floor, e.drawn * (1.0 + self.headroom))
            if e.drawn <= UPPER * e.granted:
                return max(e.floor, e.granted)
        return math.inf

    def targets(self, now: float, renewing: str | None = None) -> dict[str, float]:
        """The share of every worker that holds a lease or waits for one (and of
        ``renewing``, which is back if it was silent); silent ones keep their floors."""
        active = {
            k: e for k, e in self.workers.items() if e.live(now) or e.granted <= 0 or k == renewing
        }
        fixed = sum(e.reserved(now) for k, e in self.workers.items() if k not in active)
        keys = list(active)
        missing = self.expect - len(self.joined)
        if missing > 0 and now < self.expect_until:
            fixed += missing * self.watts / self.expect  # an even share for each still to come
        shares = _fill(
            [active[k].floor for k in keys],
            [active[k].want for k in keys],
            [active[k].weight for k in keys],
            max(self.watts - fixed, 0.0),
        )
        return dict(zip(keys, shares, strict=True))

    # -- calls -------------------------------------------------------------
    def renew(
        self,
        worker: str,
        *,
        floor: float,
        weight: float,
        demand: float,
        drawn: float,
        held: float,
        epoch: str,
        seq: int,
        now: float,
        used_j: float = math.nan,
        held_j: float = 0.0,
    ) -> float:
        """One renewal (or a first call): the worker's new lease in watts, valid
        ``expiry`` s; 0 means "no lease now, keep what you hold and ask again".
        With an energy pool, ``used_j`` is what the worker used since it joined,
        and its allowance (``workers[worker].allowed_j``) is topped up."""
        floor = _checks.number("floor", floor, "watts", lo=0.0, lo_open=True)
        weight = _checks.number("weight", weight, lo=0.0, lo_open=True)
        demand = _demand("demand", demand)
        drawn = _demand("drawn", drawn)
        held = _checks.number("held", held, "watts", lo=0.0)
        used_j = math.nan if used_j != used_j else _checks.number("used_j", used_j, "joules", lo=0)
        self._tidy(now)
        e = self.workers.get(worker)
        if e is None:
            floors = sum(x.floor for x in self.workers.values())
            if floors + floor > self.watts + _EPS:
                raise NrgError(
                    f"the budget of {self.watts:g} W has no room for another worker's floor "
                    f"of {floor:g} W: {len(self.workers)} workers hold floors of {floors:g} W "
                    "in all; give the workers smaller floors or the budget more watts"
                )
            e = self.workers[worker] = _Worker(floor=floor, weight=weight, seen=now)
            if len(self.joined) < self.expect:
                self.joined.add(worker)
            if held > 0:
                # a worker that holds watts the keeper does not know of (a lease of its
                # previous life, or one it forgot): they are in force, so count them
                e.granted, e.expires = held, now + self.expiry
            e.allowed_j = _checks.number("held_j", held_j, "joules", lo=0.0)
        e.floor, e.weight, e.demand, e.drawn, e.seen = floor, weight, demand, drawn, now
        e.want = self._want(e)
        if held <= e.granted + _EPS:
            e.high_until = -math.inf  # it holds what was sent: a lowering acknowledged
        warming = now < self.warm_until
        want = self.targets(now, renewing=worker)[worker]
        room = self.watts - self.reserved(now, but=worker)
        grant = min(want, room)
        if warming:
            grant = min(grant, held)  # nothing above what it holds until every old lease ended
        if e.granted <= 0 and grant < min(floor, want) - _EPS:
            grant = 0.0  # a first lease is at least the floor: wait for the others to shrink
        e.seq = seq
        if grant <= 0:
            return 0.0
        current = e.reserved(now)
        if grant < current - _EPS:
            e.high, e.high_until = current, max(e.expires, e.high_until)
        e.granted, e.expires = grant, now + self.expiry
        self._top_up(e, used_j, grant)
        return grant

    def _top_up(self, e: _Worker, used_j: float, grant: float) -> None:
        """Energy: allow the worker what its lease would use until a few renewals on."""
        if used_j == used_j:
            e.used_j = used_j
        if self.joules is None:
            return
        used = e.used_j if e.used_j == e.used_j else 0.0
        want = used + grant * (self.expiry + self.period)
        extra = min(max(want - e.allowed_j, 0.0), self.joules_left)
        e.allowed_j += extra
        self.joules_left -= extra

    def ack(self, worker: str, seq: int) -> None:
        """The worker applied the lease of renewal ``seq``: a lowering is done."""
        e = self.workers.get(worker)
        if e is not None and e.seq == seq:
            e.high_until = -math.inf

    def leave(self, worker: str, used_j: float = math.nan) -> None:
        """The worker is done; with ``used_j`` (what it used since it joined) the
        joules it was allowed and did not use go back to the energy pool."""
        e = self.workers.pop(worker, None)
        if e is not None and self.joules is not None and used_j == used_j:
            self.joules_left += max(e.allowed_j - used_j, 0.0)

    def status(self, now: float) -> dict[str, Any]:
        self._tidy(now)
        targets = self.targets(now)
        return {
            "watts": self.watts,
            "reserved_w": self.reserved(now),
            "joules": self.joules,
            "joules_left": self.joules_left,
            "epoch": self.epoch,
            "warming": now < self.warm_until,
            "period_s": self.period,
            "expiry_s": self.expiry,
            "policy": self.policy,
            "workers": {
                k: {
                    "lease_w": e.granted if e.live(now) else 0.0,
                    "reserved_w": e.reserved(now),
                    "target_w": targets.get(k, e.reserved(now)),
                    "demand_w": e.demand,
                    "drawn_w": e.drawn,
                    "floor_w": e.floor,
                    "allowed_j": e.allowed_j,
                    "used_j": e.used_j,
                    "weight": e.weight,
                    "state": "live" if e.live(now) else "waiting" if e.granted <= 0 else "silent",
                }
                for k, e in self.workers.items()
            },
        }


# ---------------------------------------------------------------------------
# the keeper on Ray


class _Keeper:
    """The Ray actor around a ledger (made a Ray actor class by ``_actor_class``)."""

    def __init__(self, watts: float, settings: dict[str, Any]) -> None:
        ray = _ray()
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        settings = dict(settings)
        self._floor = settings.pop("floor")  # the workers' default floor
        self._ledger = _Ledger(watts, now=time.monotonic(), restarted=restarted, **settings)

    def config(self) -> dict[str, Any]:
        lg = self._ledger
        return {
            "watts": lg.watts,
            "joules": lg.joules,
            "period": lg.period,
            "expiry": lg.expiry,
            "epoch": lg.epoch,
            "floor": self._floor,
        }

    def renew(self, worker: str, report: dict[str, Any]) -> tuple[str, float, float, float]:
        lg = self._ledger
        grant = lg.renew(worker, now=time.monotonic(), **report)
        e = lg.workers.get(worker)
        allowed = math.inf if lg.joules is None else e.allowed_j if e is not None else 0.0
        return lg.epoch, grant, lg.expiry, allowed

    def ack(self, worker: str, seq: int) -> None:
        self._ledger.ack(worker, seq)

    def leave(self, worker: str, used_j: float = math.nan) -> None:
        self._ledger.leave(worker, used_j)

    def status(self) -> dict[str, Any]:
        return self._ledger.status(time.monotonic())

    def set_watts(self, watts: float) -> None:
        self._ledger.watts = _checks.number("watts", watts, "watts", lo=0.0, lo_open=True)


_actor_cls: Any = None


def _actor_class() -> Any:
    global _actor_cls
    if _actor_cls is None:
        # num_cpus=0: the keeper only waits for calls; it must not take a CPU
        # from the workers (a 2-CPU ray.init() runs it beside them)
        _actor_cls = _ray().remote(num_cpus=0)(_Keeper)
    return _actor_cls


class PowerBudget:
    """A fleet's power budget: starts the keeper, a named Ray actor, and talks to it.

    Args:
        watts: the total, W (> 0).
        name: the keeper's name; workers find it by this name (``LeasedCap(name)``).
        period: how often each worker renews its lease, s (> 0; default 1 s).
        expiry: how long a lease lives without renewal, s (default 3 periods; >= period).
        floor: the default least share of a worker, W (> 0; default 1% of ``watts``).
            Every worker gets at least its floor, and shrinks to it when it
            cannot reach the keeper.  The floors of all workers must fit in ``watts``.
        forget: how long a silent worker's floor stays booked, s (default 20 expiries).
        headroom: what a worker gets over its demand, a fraction in [0, 1) (default 0.05).
        policy: "balance" (move slack to the capped workers; the default) or "even"
            (shares by weight only, demands ignored).
        expect: how many workers the fleet will have (0: not known).  Until that
            many have joined (or for ``forget`` s), an even share of each one still
            to come stays in the pool, so that the first to join do not take it all
            and the later ones do not wait for them to shrink (an even start, as
            GEOPM's and Slurm's balancers make).
        joules: an energy pool for the fleet's truncated loops, J (> 0), or None.
            Each worker's ``cap.energy`` (an EnergyBudget) is then its allowance,
            topped up at each renewal by what its lease would use until the next
            few; the allowances never sum above ``joules``.
        namespace: the Ray namespace of the keeper (default: the job's).
        detached: keep the keeper alive after this driver exits (Ray's detached lifetime).
        max_restarts: how often Ray may restart a keeper that died (-1: always).

    Call ``ray.init()`` first.  ``PowerBudget.connect(name)`` finds a running keeper.
    """

    def __init__(
        self,
        watts: float,
        *,
        name: str = DEFAULT_NAME,
        period: float = DEFAULT_PERIOD_S,
        expiry: float | None = None,
        floor: float | None = None,
        forget: float | None = None,
        headroom: float = 0.05,
        policy: str = "balance",
        joules: float | None = None,
        expect: int = 0,
        namespace: str | None = None,
        detached: bool = False,
        max_restarts: int = -1,
    ) -> None:
        watts = _checks.number("watts", watts, "watts", lo=0.0, lo_open=True)
        if joules is not None:
            joules = _checks.number("joules", joules, "joules", lo=0.0, lo_open=True)
        expect = _checks.count("expect", expect, lo=0)
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        period = _checks.number("period", period, "seconds", lo=0.0, lo_open=True)
        if expiry is None:
            expiry = EXPIRY_PERIODS * period
        expiry = _checks.number("expiry", expiry, "seconds", lo=period)
        if floor is None:
            floor = watts / 100.0
        floor = _checks.number("floor", floor, "watts", lo=0.0, hi=watts, lo_open=True)
        if forget is None:
            forget = FORGET_EXPIRIES * expiry
        forget = _checks.number("forget", forget, "seconds", lo=expiry)
        headroom = _checks.number("headroom", headroom, lo=0.0, hi=1.0, hi_open=True)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        _checks.boolean("detached", detached)
        _checks.count("max_restarts", max_restarts, lo=-1)
        ray = _ray()
        if not ray.is_initialized():
            raise NrgError("call ray.init() (or ray.init(address=...)) before PowerBudget(...)")
        options: dict[str, Any] = {"name": name, "max_restarts": max_restarts}
        if namespace is not None:
            options["namespace"] = namespace
        if detached:
            options["lifetime"] = "detached"
        settings = {
            "period": period,
            "expiry": expiry,
            "forget": forget,
            "headroom": headroom,
            "policy": policy,
            "joules": joules,
            "floor": floor,
            "expect": expect,
        }
        self.name, self.namespace, self.floor = name, namespace, floor
        try:
            self._actor = _actor_class().options(**options).remote(watts, settings)
        except ValueError as exc:  # Ray: the name is taken
            raise NrgError(
                f"a power budget keeper named {name!r} already runs in this Ray namespace "
                f"({exc}); use PowerBudget.connect({name!r}) or another name"
            ) from None
        self._config: dict[str, Any] = ray.get(self._actor.config.remote())

    @classmethod
    def connect(
        cls, name: str = DEFAULT_NAME, namespace: str | None = None, floor: float | None = None
    ) -> PowerBudget:
        """The budget of a keeper already running under ``name``."""
        ray = _ray()
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError:
            raise NrgError(
                f"no power budget keeper named {name!r} is running in this Ray cluster "
                "(start one with nrgloops.cluster.PowerBudget(watts, name=...))"
            ) from None
        self = cls.__new__(cls)
        self.name, self.namespace, self._actor = name, namespace, actor
        self._config = ray.get(actor.config.remote())
        self.floor = (
            _checks.number("floor", floor, "watts", lo=0.0, lo_open=True)
            if floor is not None
            else float(self._config["floor"])  # the one the budget was made with
        )
        return self

    @property
    def period(self) -> float:
        """How often workers renew, s."""
        return float(self._config["period"])

    @property
    def watts(self) -> float:
        """The total, W.  Assign to change it: workers follow at their next renewals."""
        return float(self.status()["watts"])

    @watts.setter
    def watts(self, value: float) -> None:
        value = _checks.number("watts", value, "watts", lo=0.0, lo_open=True)
        _ray().get(self._actor.set_watts.remote(value))

    def status(self) -> dict[str, Any]:
        """The keeper's view now: the total, what is reserved, and each worker's
        lease, target, demand, draw, floor and state (W)."""
        status: dict[str, Any] = _ray().get(self._actor.status.remote())
        return status

    def shutdown(self) -> None:
        """Stop the keeper (workers then shrink to their floors)."""
        _ray().kill(self._actor, no_restart=True)

    def __reduce__(self) -> Any:
        # a budget handed to a Ray task or actor travels as its actor handle
        return (_rebuild, (self.name, self.namespace, self.floor, self._actor, self._config))

    def __repr__(self) -> str:
        return f"<PowerBudget {self.name!r}: {self._config['watts']:g} W, period {self.period:g} s>"


def _rebuild(
    name: str, namespace: str | None, floor: float, actor: Any, config: dict[str, Any]
) -> PowerBudget:
    self = PowerBudget.__new__(PowerBudget)
    self.name, self.namespace, self.floor, self._actor, self._config = (
        name,
        namespace,
        floor,
        actor,
        config,
    )
    return self


# ---------------------------------------------------------------------------
# the worker's side


class LeaseState(NamedTuple):
    """What a LeasedCap holds (W, s; times on this process's monotonic clock)."""

    watts: float  # the cap in force now
    lease_w: float  # the last share the keeper granted
    expires: float  # when that lease ends (monotonic s)
    reachable: bool  # the last renewal was answered
    renewals: int  # answered renewals
    failures: int  # renewals that got no answer in time


DemandSource = Callable[[], float]


class LeasedCap(PowerCap):
    """A PowerCap whose watts follow this worker's lease from a :class:`PowerBudget`.

    Taking one joins the budget: it waits for a first lease (at least the
    floor; a second or so when the others must shrink first), then a
    background thread renews it every period.  Use it wherever a PowerCap
    goes (``nrg_adapt(cap, knob=...)``, ``perforate(items, cap)``); ``close()``
    (or the end of ``with cap:``) gives the share back.

    Args:
        budget: a PowerBudget, or the name of a running keeper.
        floor: this worker's least share, W (default: the budget's floor).
        weight: how much of the slack this worker gets relative to others (> 0).
        demand: what this worker would draw at full speed, W: a number (>= 0),
            a function returning one (NaN: not known), or None to report what
            ``follow(loop)`` gives (else nothing: the keeper then uses the draw).
        window, meter, domain: as for PowerCap (the meter also measures the
            draw reported at each renewal).
        namespace: the keeper's Ray namespace, when ``budget`` is a name.
        wait: longest wait for the first lease, s (default: 3 expiries).

    ``cap.watts`` cannot be assigned: change the budget (``budget.watts = ...``).
    """

    def __init__(
        self,
        budget: str | PowerBudget = DEFAULT_NAME,
        *,
        floor: float | None = None,
        weight: float = 1.0,
        demand: float | DemandSource | None = None,
        window: float | None = None,
        meter: str | Meter = "auto",
        domain: str | None = None,
        namespace: str | None = None,
        wait: float | None = None,
    ) -> None:
        ray = _ray()
        if isinstance(budget, str):
            budget = PowerBudget.connect(budget, namespace=namespace)
        elif not isinstance(budget, PowerBudget):
            raise TypeError(
                f"budget must be a nrgloops.cluster.PowerBudget or a keeper's name, "
                f"not {type(budget).__name__}"
            )
        floor = budget.floor if floor is None else floor
        floor = _checks.number("floor", floor, "watts", lo=0.0, lo_open=True)
        self.weight = _checks.number("weight", weight, lo=0.0, lo_open=True)
        self._demand_fn: DemandSource | None = None
        self._demand_w = math.nan
        if callable(demand):
            self._demand_fn = demand
        elif demand is not None:
            self._demand_w = _demand("demand", demand)
        self._following = False
        super().__init__(floor, window, meter, domain)  # the floor until the first lease
        self.floor = floor
        self.budget = budget
        self.period = budget.period
        self._ray = ray
        self._actor = budget._actor
        self._id = uuid.uuid4().hex
        self._epoch = ""
        self._seq = 0
        self._lease = 0.0
        self._ttl = float(budget._config["expiry"])
        self._expires = -math.inf
        self._renewals = self._failures = 0
        self._sent = -math.inf
        self._reported = math.nan
        self._reachable = False
        self._warned: set[str] = set()
        self._last_read = self._read()
        self._j0 = self._last_read[1]
        self._allowed_j = 0.0
        self._energy = _LeasedEnergy(self) if budget._config.get("joules") is not None else None
        self._stop = threading.Event()
        self._lock = _forksafe.lock()
        #: (monotonic s, watts in force, answered) after every renewal
        self.history: collections.deque[tuple[float, float, bool]] = collections.deque(
            maxlen=100_000
        )
        wait = 3.0 * self._ttl if wait is None else wait
        wait = _checks.number("wait", wait, "seconds", lo=0.0, lo_open=True)
        deadline = time.monotonic() + wait
        while not self._renew():
            if self._stop.wait(min(self.period / 4.0, max(deadline - time.monotonic(), 0.0))):
                break
            if time.monotonic() >= deadline:
                raise NrgError(
                    f"no lease from the power budget {budget.name!r} within {wait:g} s "
                    f"(floor {floor:g} W); is the keeper running and the budget not full?"
                )
        self._following = True
        # (the thread holds the cap weakly: a cap dropped without close() stops
        # renewing, and its lease expires at the keeper)
        self._thread = threading.Thread(
            target=_renewing,
            args=(weakref.ref(self), self._stop, self.period / CHECKS_PER_PERIOD),
            name=f"nrgloops lease {budget.name}",
            daemon=True,
        )
        self._thread.start()

    # -- the cap --------------------------------------------------------------
    @property
    def watts(self) -> float:
        """The cap in force, W: this worker's lease (shrinking when the keeper is away)."""
        return self._watts

    @watts.setter
    def watts(self, value: float) -> None:
        if getattr(self, "_following", False):
            raise AttributeError(
                "a LeasedCap's watts follow its lease: change the budget "
                "(budget.watts = ...) or this worker's weight/demand instead"
            )
        self._watts = _checks.number("watts", value, "watts", lo=0.0, lo_open=True)

    def _apply(self, watts: float) -> None:
        # one float replaced (atomic under the GIL): the loop follows at its next tick
        self._watts = watts

    def follow(self, source: Any) -> LeasedCap:
        """Report ``source``'s demand at each renewal: an adapt loop's ``demand_w``
        (the knob model's power at full speed), or a Knob's ``predict(top)``."""
        if hasattr(source, "demand_w"):
            self._demand_fn = lambda: float(source.demand_w)
        elif hasattr(source, "predict") and hasattr(source, "top"):
            self._demand_fn = lambda: float(source.predict(source.top))
        else:
            raise TypeError(
                f"follow() takes an nrg_adapt loop (with demand_w) or a Knob, "
                f"not {type(source).__name__}"
            )
        return self

    @property
    def energy(self) -> EnergyBudget:
        """This worker's share of the budget's joules, for ``truncate(items, cap.energy)``:
        an EnergyBudget whose ``joules`` follow the allowance (counted from when the
        cap was taken: start the truncated loop then).  Only with ``PowerBudget(joules=)``."""
        if self._energy is None:
            raise NrgError(
                f"the power budget {self.budget.name!r} has no energy pool: "
                "start it with PowerBudget(watts, joules=...)"
            )
        return self._energy

    @property
    def lease(self) -> LeaseState:
        """The lease now."""
        with self._lock:
            return LeaseState(
                self._watts,
                self._lease,
                self._expires,
                self._reachable,
                self._renewals,
                self._failures,
            )

    # -- renewals -------------------------------------------------------------
    def _read(self) -> tuple[float, float]:
        r = self.meter.read()
        names = (self.domain,) if self.domain is not None else self.meter.total_domains
        return r.time, sum(r.joules[d] for d in names)

    def _report(self) -> dict[str, Any]:
        t, j = self._read()
        t0, j0 = self._last_read
        self._last_read = (t, j)
        drawn = (j - j0) / (t - t0) if t > t0 else math.nan
        demand = self._reported = self._demand_now()
        return {
            "floor": self.floor,
            "weight": self.weight,
            "demand": demand,
            "drawn": max(drawn, 0.0) if drawn == drawn else math.nan,
            "held": self._watts if self._lease > 0 else 0.0,  # what is in force now
            "epoch": self._epoch,
            "seq": self._seq,
            "used_j": j - self._j0,
            "held_j": self._allowed_j if self._allowed_j < math.inf else 0.0,
        }

    def _demand_now(self) -> float:
        if self._demand_fn is None:
            return self._demand_w
        try:
            return _demand("demand", self._demand_fn())
        except (TypeError, ValueError) as exc:
            self._warn_once("demand", f"LeasedCap: the demand reported is not usable: {exc}")
            return math.nan

    def _demand_moved(self) -> bool:
        """The demand moved by more than DEMAND_MOVE since it was last reported."""
        now, then = self._demand_now(), self._reported
        if now != now:
            return False
        if then != then:
            return True
        return abs(now - then) > DEMAND_MOVE * max(then, self.floor)

    def _renew(self) -> bool:
        """One renewal; True when a lease was granted."""
        sent = self._sent = time.monotonic()
        self._seq += 1
        report = self._report()
        try:
            epoch, grant, ttl, allowed_j = self._ray.get(
                self._actor.renew.remote(self._id, report), timeout=self.period
            )
        except Exception as exc:  # unreachable, restarting, refused, too slow
            if self._lease <= 0 and isinstance(exc, (NrgError, ValueError, TypeError)):
                # refused at joining: say why (Ray's error is also the keeper's type)
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else exc) from None
            self._fallback(time.monotonic(), answered=False)
            return False
        if grant <= 0:
            self._fallback(time.monotonic(), answered=True)
            return False
        with self._lock:
            self._epoch, self._lease, self._ttl = epoch, float(grant), float(ttl)
            self._allowed_j = max(self._allowed_j, float(allowed_j))  # never taken back
            if self._energy is not None:
                self._energy._follow(self._allowed_j)
            self._expires = sent + self._ttl
            self._apply(self._lease)
            self._renewals += 1
            self._reachable = True
            self.history.append((time.monotonic(), self._watts, True))
        self._actor.ack.remote(self._id, report["seq"])  # fire and forget
        return True

    def _fallback(self, now: float, answered: bool) -> None:
        """No new lease: shrink from the last share to the floor by its expiry."""
        with self._lock:
            self._failures += 0 if answered else 1
            self._reachable = answered
            self._shrink(now)
            self.history.append((now, self._watts, answered))

    def _shrink(self, now: float) -> None:
        if self._lease > 0:
            low = min(self.floor, self._lease)
            left = max(0.0, min(1.0, (self._expires - now) / self._ttl))
            self._apply(min(self._watts, low + (self._lease - low) * left))

    def _check(self) -> None:
        """Every quarter period: renew when a period is up, or at once when the
        demand moved (its slack reaches the others a period sooner); while the
        keeper is away, keep shrinking toward the floor in between."""
        try:
            now = time.monotonic()
            if now - self._sent >= self.period * 0.999 or self._demand_moved():
                self._renew()
            elif not self._reachable:
                with self._lock:
                    self._shrink(now)
        except Exception as exc:  # never let the thread die: shrink and retry
            self._warn_once(type(exc).__name__, f"LeasedCap: renewal failed: {exc}")
            self._fallback(time.monotonic(), answered=False)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(text, RuntimeWarning, stacklevel=2)

    # -- end ------------------------------------------------------------------
    def close(self) -> None:
        """Stop renewing and give the share back (the cap falls to the floor)."""
        if self._stop.is_set():
            return
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join()
        with self._lock:
            self._apply(min(self.floor, self._watts))
            self._lease = 0.0
        used_j = self._read()[1] - self._j0
        with contextlib.suppress(Exception):  # the keeper is away: the lease expires alone
            self._ray.get(self._actor.leave.remote(self._id, used_j), timeout=self.period)

    def __enter__(self) -> LeasedCap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LeasedCap({self._watts:g} W of budget {self.budget.name!r}, "
            f"floor {self.floor:g} W, {self.meter.kind}, {self.meter.label})"
        )


def _renewing(ref: weakref.ref[LeasedCap], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        cap = ref()
        if cap is None:
            return
        cap._check()
        del cap


class _LeasedEnergy(EnergyBudget):
    """A LeasedCap's energy allowance, as an EnergyBudget a truncated loop reads."""

    def __init__(self, cap: LeasedCap) -> None:
        self._following = False
        super().__init__(_TINY_J, meter=cap.meter, domain=cap.domain)
        self._following = True

    @property
    def joules(self) -> float:
        """This worker's allowance, J (it grows at renewals while the pool lasts)."""
        return self._joules

    @joules.setter
    def joules(self, value: float) -> None:
        if getattr(self, "_following", False):
            raise AttributeError(
                "a leased energy budget follows its allowance: change the pool instead"
            )
        self._joules = _checks.number("joules", value, "joules", lo=0.0, lo_open=True)

    def _follow(self, joules: float) -> None:
        self._joules = max(joules, _TINY_J)
