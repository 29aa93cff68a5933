"""The sampler: a C thread reading a meter into a ring, shared by its users.

The first user of a (meter, period, history) starts the C thread, the last
one stops it (pyinstrument's pattern).  Each user holds a ``Sampler`` handle; the
hot path, ``power(window)``, reads a value the thread already published: one
dict lookup and one memory load, no lock, no system call.

Lifetime: the ring (and the published powers) is freed only when nothing
refers to it any more -- no handle, no ``published`` view a loop still
holds, no call in flight -- so stopping a sampler while other threads read it
gives them the last values, never freed memory.  A started handle that is
dropped without ``stop()`` releases its share when it is collected.

Stale power: when reads fail (a counter that went away, NVML "not ready")
for ``NRG_STALE_READS`` reads in a row and at least ``NRG_STALE_MIN_MS``
(5 reads and 20 ms), the thread publishes NaN as every windowed power until
a read works again: ``power()`` returns NaN and ``stale`` is True.  NaN
compares false with everything, so a loop's ``power <= cap`` is False and
it treats the power as unknown rather than acting on the last good number.
``energy()`` keeps the last good total (a lower bound) meanwhile.

Counter resets: a step larger than the physical bound is not booked as a
wrap (see ``Meter.resets``); ``resets`` counts them and ``stop()`` logs a
warning when any were seen.
"""

from __future__ import annotations

import atexit
import errno
import logging
import math
import os
import weakref
from types import TracebackType
from typing import Any

from nrgloops import _checks, _forksafe
from nrgloops._errors import NrgError
from nrgloops._ffi import check, ffi, lib
from nrgloops.meters._base import Meter

__all__ = ["DEFAULT_HISTORY_S", "Sampler", "halt_all_in_child"]

log = logging.getLogger("nrgloops")

DEFAULT_HISTORY_S = 10.0  # the ring holds at least this much history
MIN_PERIOD_S = 1e-4  # faster than 10 kHz the thread would only spin
MAX_RING_BYTES = 1 << 30  # a ring larger than 1 GiB is a mistake, not a plan
# power(window) publishes at most this many windows per handle, and only
# while a slot is free; more distinct windows are computed from the ring at
# each call (slower, never an error).  Such automatic slots rank below
# explicit watches (the loops'): watch() takes one back when none is free.
AUTO_WATCH_PER_HANDLE = 8
MAX_POINTS = 2**31 - 1  # series() counts in a C int


class _Core:
    """One running C sampler, shared by every handle on the same meter, period
    and history (the core holds the meter, so its id stays unique)."""

    def __init__(self, meter: Meter, period: float, history: float) -> None:
        self.meter = meter
        self.period = period
        self.capacity = int(math.ceil(history / period)) + 64
        self.history = (self.capacity - 2) * period
        ring_bytes = self.capacity * (len(meter.domains) + 2) * 8
        if ring_bytes > MAX_RING_BYTES or self.capacity >= 2**31:
            raise ValueError(
                f"history={history:g} s at period={period:g} s needs a ring of "
                f"{ring_bytes / 2**20:.0f} MiB; use a longer period or a shorter history "
                f"(at most {MAX_RING_BYTES // 2**20} MiB)"
            )
        out = ffi.new("nrg_sampler **")
        check(
            lib.nrg_sampler_start(out, meter._source, period, self.capacity, meter.total_mask),
            f"starting the sampler on the {meter.kind} meter",
        )
        # Freed (thread joined first) when the last reference goes: the view
        # below holds one, so does every call in flight.
        self.ptr = ffi.gc(out[0], lib.nrg_sampler_stop)
        # A memoryview over the C array: indexing it is the cheapest read
        # Python has (cheaper than a cffi pointer or a numpy array).  Made
        # from a buffer over self.ptr itself, which keeps the ring alive.
        published = lib.nrg_sampler_published(self.ptr)
        offset = int(ffi.cast("uintptr_t", published)) - int(ffi.cast("uintptr_t", self.ptr))
        size = ffi.sizeof("double") * int(lib.NRG_MAX_SLOTS)
        whole = memoryview(ffi.buffer(self.ptr, offset + size))
        self.published = whole[offset:].cast("d")
        self.users = 0
        self.halted = False
        # Who holds each C slot (the C core only counts): explicit watches
        # per slot, and the leases holding a slot automatically (power()).
        self.explicit: dict[int, int] = {}
        self.auto: dict[int, set[_Lease]] = {}

    def halt(self) -> None:
        """Stop the thread but keep the ring: handles may still read it."""
        if not self.halted:
            self.halted = True
            lib.nrg_sampler_halt(self.ptr)

    stop = halt  # the memory itself goes with the last reference

    def reclaim(self) -> bool:
        """Take back one slot that only automatic watches hold (call with
        _lock held): their handles compute that window at each call from
        then on.  False when every slot has an explicit watch."""
        for slot, leases in self.auto.items():
            if self.explicit.get(slot, 0) == 0:
                for lease in list(leases):
                    lease.forget(slot)
                log.debug("nrgloops: sampler slot %d taken back from power() for a watch", slot)
                return True
        return False


# Every module-level state below is guarded by _lock (unlocked again in a
# forked child by nrgloops._forksafe).
_lock = _forksafe.lock()
_cores: dict[tuple[int, float, float], _Core] = {}


# Leases of handles collected while started.  A finalizer can run inside any
# code, also while this thread holds _lock, so it only queues the lease; the
# queue is emptied by whoever holds the lock next (or at once if it is free).
_dropped: list[_Lease] = []


def _drain() -> None:
    """Release the queued leases; call with _lock held."""
    while _dropped:
        _dropped.pop()._release()


def _acquire(meter: Meter, period: float, history: float) -> _Lease:
    with _lock:
        _drain()
        key = (id(meter), period, history)
        core = _cores.get(key)
        if core is None:
            core = _cores[key] = _Core(meter, period, history)
        core.users += 1
        lease = _Lease(core, key)
        _drain()  # a lease collected meanwhile leaves this core in use
        return lease


_Key = tuple[float, str | None]  # (window, domain)


class _Lease:
    """One handle's share of a core and the slots it watches, given back
    once: by ``stop()``, or after the handle was collected while started.

    ``keys`` and ``total`` are the handle's own lookups (the handle reads
    them, the lease changes them under _lock): an automatic slot taken back
    by ``_Core.reclaim`` leaves them, and ``power()`` computes that window."""

    def __init__(self, core: _Core, key: tuple[int, float, float]) -> None:
        self.core = core
        self.key = key
        self.keys: dict[_Key, int] = {}  # (window, domain) -> slot, every watch
        self.total: dict[float, int] = {}  # window -> slot, domain None: the hot path's
        self.explicit: set[int] = set()
        self.auto: set[int] = set()
        self.done = False

    def watch(self, w: float, col: int, domain: str | None, auto: bool) -> int | None:
        """The slot publishing (w, domain), watched explicitly (``watch()``:
        an automatic slot of this lease is taken back if none is free) or
        automatically (``power()``: None when no slot is free)."""
        core = self.core
        with _lock:
            _drain()
            if self.done:
                raise NrgError("the sampler was stopped while a window was being watched")
            slot = self.keys.get((w, domain))
            if slot is not None:
                if not auto and slot in self.auto:  # power() used it first: now it is kept
                    self._drop_auto(slot)
                    self._add_explicit(slot)
                return slot
            rc = lib.nrg_sampler_watch(core.ptr, w, col)
            if rc == -errno.ENOSPC:
                if auto:
                    return None
                while rc == -errno.ENOSPC and core.reclaim():
                    rc = lib.nrg_sampler_watch(core.ptr, w, col)
            slot = check(
                rc,
                "watching a power window",
                reasons={
                    errno.ENOSPC: (
                        f"this sampler already publishes {lib.NRG_MAX_SLOTS} distinct "
                        "(window, domain), every one watched by a loop or a watch() call: "
                        "stop samplers no longer used, or reuse a window already in use"
                    )
                },
            )
            if auto:
                self.auto.add(slot)
                core.auto.setdefault(slot, set()).add(self)
            else:
                self._add_explicit(slot)
            self.keys[(w, domain)] = slot
            if domain is None:
                self.total[w] = slot
            return slot

    def _add_explicit(self, slot: int) -> None:
        self.explicit.add(slot)
        self.core.explicit[slot] = self.core.explicit.get(slot, 0) + 1

    def _drop_auto(self, slot: int) -> None:
        self.auto.discard(slot)
        leases = self.core.auto.get(slot)
        if leases is not None:
            leases.discard(self)
            if not leases:
                del self.core.auto[slot]

    def forget(self, slot: int) -> None:
        """Give back an automatic slot (with _lock held)."""
        self._drop_auto(slot)
        for key, s in list(self.keys.items()):
            if s == slot:
                del self.keys[key]
                if key[1] is None:
                    self.total.pop(key[0], None)
        lib.nrg_sampler_unwatch(self.core.ptr, slot)

    def release(self) -> None:
        with _lock:
            _drain()
            self._release()

    def dropped(self) -> None:
        """The finalizer's part: queue, and release at once if the lock is free."""
        _dropped.append(self)
        if _lock.acquire(blocking=False):
            try:
                _drain()
            finally:
                _lock.release()

    def _release(self) -> None:
        if self.done:
            return
        self.done = True
        core = self.core
        for slot in list(self.auto):
            self.forget(slot)
        for slot in self.explicit:
            left = core.explicit.get(slot, 0) - 1
            if left > 0:
                core.explicit[slot] = left
            else:
                core.explicit.pop(slot, None)
            lib.nrg_sampler_unwatch(core.ptr, slot)
        self.explicit.clear()
        self.keys.clear()
        self.total.clear()
        core.users -= 1
        if core.users == 0:
            if _cores.get(self.key) is core:
                del _cores[self.key]
            core.halt()


@atexit.register
def _halt_all() -> None:
    # At exit, daemon threads and loops may still hold handles: join the C
    # threads but free nothing, so that a late read sees stale values, never
    # freed memory.
    with _lock:
        for core in _cores.values():
            core.halt()


def halt_all_in_child() -> None:
    """For a forked child that must not sample (a governor's workload): stop
    the sampler threads that were started again in it."""
    _halt_all()


def _respawn_in_child() -> None:
    # After fork() only the forking thread exists: start each sampler's
    # thread again on the same ring, so that pointers held by loops stay
    # valid.  (_lock is unlocked again already: nrgloops._forksafe's hook
    # runs before this one.)
    for core in _cores.values():
        lib.nrg_sampler_forked(core.ptr)
        if not core.halted:
            lib.nrg_sampler_respawn(core.ptr)


os.register_at_fork(after_in_child=_respawn_in_child)


def _seconds(name: str, value: Any) -> float:
    return _checks.number(name, value, "seconds", lo=0.0, lo_open=True)


class Sampler:
    """Average power and energy of a meter, kept by a background C thread.

    >>> with Sampler(meter, period=0.001) as s:
    ...     s.power(window=0.1)   # W, over the last 0.1 s, total of the meter
    ...     s.energy()            # J since this sampler started

    Args:
        meter: the Meter to read.
        period: seconds between reads (default: the meter's, 1 ms for RAPL).
        history: seconds of history the ring holds (at least 10 s).
    """

    def __init__(
        self, meter: Meter, period: float | None = None, history: float = DEFAULT_HISTORY_S
    ) -> None:
        if not isinstance(meter, Meter):
            raise TypeError(f"meter must be a nrgloops Meter, not {type(meter).__name__}")
        self.meter = meter
        self.period = _seconds("period", meter.default_period if period is None else period)
        if self.period < MIN_PERIOD_S:
            raise ValueError(f"period must be at least {MIN_PERIOD_S:g} s, got {self.period!r}")
        if self.period > meter.max_period:
            raise ValueError(
                f"period={self.period} s is too slow for the {meter.kind} meter: its "
                f"counter can wrap twice between reads; use period <= {meter.max_period:.3g} s"
            )
        self.history = _seconds("history", history)
        self._core: _Core | None = None
        self._lease: _Lease | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        # the lease's lookups while started (see _Lease), empty ones else
        self._slots: dict[_Key, int] = {}
        self._total_slots: dict[float, int] = {}  # the hot path's
        self._published: Any = None
        self._energy0: dict[int, float] = {}
        self._resets0 = 0

    # -- lifetime --------------------------------------------------------
    def start(self) -> Sampler:
        if self._core is None:
            lease = _acquire(self.meter, self.period, self.history)
            core = lease.core
            self._energy0 = {
                d: lib.nrg_sampler_energy(core.ptr, d) for d in range(-1, len(self.meter.domains))
            }
            self._resets0 = self.meter.resets
            self._lease = lease
            self._finalizer = weakref.finalize(self, lease.dropped)
            self._published = core.published
            self._slots, self._total_slots = lease.keys, lease.total
            self._core = core
        return self

    def stop(self) -> None:
        """Give back this handle's share (the last one stops the thread).

        Other threads still reading this handle get the last values (or NaN
        for a window no longer published), never freed memory."""
        core, lease = self._core, self._lease
        if core is None or lease is None:
            return
        self._core = self._lease = None
        self._published = None
        self._slots, self._total_slots = {}, {}
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        resets = self.meter.resets - self._resets0
        lease.release()
        if resets:
            log.warning(
                "nrgloops: the %s meter's counter was reset %d time(s) while sampled "
                "(resume from suspend, a driver reload?): those intervals were not booked, "
                "so energy and power are low by their length",
                self.meter.kind,
                resets,
            )

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._core is not None

    def _need_core(self) -> _Core:
        core = self._core
        if core is None:
            raise NrgError("the sampler is not running: use `with Sampler(meter) as s:` first")
        return core

    def _ptr(self) -> Any:
        """The C sampler; holding it keeps the ring alive."""
        return self._need_core().ptr

    # -- power -----------------------------------------------------------
    def _window(self, window: Any) -> float:
        w = _seconds("window", window)
        held = self._need_core().history
        if w > held:
            raise ValueError(
                f"window={w} s is longer than the {held:.1f} s of history the sampler "
                f"holds; use a shorter window or Sampler(..., history={w:g})"
            )
        return w

    def watch(self, window: float, domain: str | None = None) -> int:
        """Have the thread publish the windowed power of ``domain`` at each
        sample; returns the slot to read in ``published``.  The slot is this
        handle's until ``stop()``; equal (window, domain) share one.  When
        every slot is taken, one that only ``power()`` calls hold is taken
        back (those calls compute that window from then on)."""
        self._need_core()
        col = self.meter.domain_index(domain)
        w = self._window(window)
        lease = self._lease
        if lease is None:
            raise NrgError("the sampler was stopped while a window was being watched")
        slot = lease.watch(w, col, domain, auto=False)
        assert slot is not None
        return slot

    @property
    def published(self) -> Any:
        """The published powers (W) as a memoryview of doubles, indexed by
        ``watch()``'s slot.  The view stays valid memory after ``stop()``
        (holding it keeps the ring), but its values are then the last ones,
        or NaN for a slot no longer watched.  NaN while the power is stale."""
        return self._need_core().published

    def power(self, window: float = 0.1, domain: str | None = None) -> float:
        """Average power over the last ``window`` seconds, W.

        The total (``domain=None``) never adds overlapping domains.  Before
        ``window`` seconds have passed it averages over what there is, and it
        is 0 W before the second sample.  NaN while the power is stale (see
        the module docstring).
        """
        # (True == 1.0 as a dict key: a bool goes to the checks below, which
        # refuse it; False could only match 0.0, never a window)
        if domain is None and window is not True:
            try:  # the hot path: a window already watched
                return self._published[self._total_slots[window]]  # type: ignore[no-any-return]
            except (KeyError, TypeError):  # not watched, unhashable, or stopped
                pass
        core = self._need_core()
        col = self.meter.domain_index(domain)
        w = self._window(window)
        lease = self._lease
        slot = self._slots.get((w, domain))
        if slot is None and lease is not None and len(lease.auto) < AUTO_WATCH_PER_HANDLE:
            try:  # only while a slot is free: a watch() may take it back
                slot = lease.watch(w, col, domain, auto=True)
            except NrgError:  # stopped meanwhile
                slot = None
        if slot is None:
            return float(lib.nrg_sampler_power(core.ptr, w, col))
        return float(core.published[slot])

    @property
    def stale(self) -> bool:
        """True while no good sample came for several periods: ``power()`` is
        NaN then, and the published windows hold NaN."""
        return bool(lib.nrg_sampler_stale(self._ptr()))

    def energy(self, domain: str | None = None) -> float:
        """Energy since this sampler started, J (the last good total while
        the power is stale)."""
        col = self.meter.domain_index(domain)
        ptr = self._ptr()
        return float(lib.nrg_sampler_energy(ptr, col) - self._energy0[col])

    def latest(self, domain: str | None = None) -> tuple[float, float]:
        """The newest row: (its monotonic time, s; the counter's energy then, J).

        Two rows' energies differ by exactly the energy between their times:
        the counter's readings, not a windowed estimate.
        """
        ptr = self._ptr()
        col = self.meter.domain_index(domain)
        t = ffi.new("double *")
        j = ffi.new("double[]", lib.NRG_MAX_DOMAINS + 1)
        lib.nrg_sampler_latest(ptr, t, j)
        return float(t[0]), float(j[len(self.meter.domains) if col < 0 else col])

    def series(
        self, after: float, window: float, domain: str | None = None, max_points: int = 100_000
    ) -> tuple[list[float], list[float]]:
        """Windowed power (W) at each sample newer than ``after`` (monotonic s),
        at most ``max_points`` of them (never more than the ring holds)."""
        core = self._need_core()
        w = self._window(window)
        col = self.meter.domain_index(domain)
        if isinstance(after, bool) or not isinstance(after, (int, float)):
            raise TypeError(f"after must be a time in seconds, not {type(after).__name__}")
        try:
            after_s = float(after)
        except OverflowError:  # a huge int: before or after every row
            after_s = math.inf if after > 0 else -math.inf
        if math.isnan(after_s):
            raise ValueError("after must be a time in seconds (time.monotonic()), got nan")
        n_max = _checks.count("max_points", max_points, lo=1, hi=MAX_POINTS)
        n_max = min(n_max, core.capacity)  # the ring holds no more rows
        t = ffi.new("double[]", n_max)
        p = ffi.new("double[]", n_max)
        n = check(lib.nrg_sampler_series(core.ptr, after_s, w, col, t, p, n_max), "series")
        return list(t[0:n]), list(p[0:n])

    @property
    def samples(self) -> int:
        """Samples taken since the C thread started."""
        return int(lib.nrg_sampler_samples(self._ptr()))

    @property
    def errors(self) -> int:
        """Reads that failed since the C thread started (they are skipped)."""
        return int(lib.nrg_sampler_errors(self._ptr()))

    @property
    def resets(self) -> int:
        """Counter resets seen (and not booked) since this handle started."""
        self._need_core()
        return self.meter.resets - self._resets0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Sampler {self.meter.kind} period={self.period:g}s {state}>"
