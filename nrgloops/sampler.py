"""The sampler: a C thread reading a meter into a ring, shared by its users.

The first user of a (meter, period, history) starts the C thread, the last
one stops it (pyinstrument's pattern).  Each user holds a ``Sampler`` handle; the
hot path, ``power(window)``, reads a value the thread already published: one
dict lookup and one memory load, no lock, no system call.
"""

from __future__ import annotations

import atexit
import errno
import math
import os
import threading
from types import TracebackType
from typing import Any

from nrgloops._errors import NrgError
from nrgloops._ffi import check, ffi, lib
from nrgloops.meters._base import Meter

__all__ = ["DEFAULT_HISTORY_S", "Sampler"]

DEFAULT_HISTORY_S = 10.0  # the ring holds at least this much history
MIN_PERIOD_S = 1e-4  # faster than 10 kHz the thread would only spin
MAX_RING_BYTES = 1 << 30  # a ring larger than 1 GiB is a mistake, not a plan


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
        self.ptr = out[0]
        # A memoryview over the C array: indexing it is the cheapest read
        # Python has (cheaper than a cffi pointer or a numpy array).
        published = lib.nrg_sampler_published(self.ptr)
        self.published = memoryview(
            ffi.buffer(published, ffi.sizeof("double") * lib.NRG_MAX_SLOTS)
        ).cast("d")
        self.users = 0
        self.halted = False

    def stop(self) -> None:
        if self.ptr is not None:
            lib.nrg_sampler_stop(self.ptr)
            self.ptr = None

    def halt(self) -> None:
        """Stop the thread but keep the ring: handles may still read it."""
        if self.ptr is not None and not self.halted:
            lib.nrg_sampler_halt(self.ptr)
            self.halted = True


_lock = threading.Lock()
_cores: dict[tuple[int, float, float], _Core] = {}


def _acquire(meter: Meter, period: float, history: float) -> _Core:
    with _lock:
        key = (id(meter), period, history)
        core = _cores.get(key)
        if core is None:
            core = _cores[key] = _Core(meter, period, history)
        core.users += 1
        return core


def _release(core: _Core, key: tuple[int, float, float]) -> None:
    with _lock:
        core.users -= 1
        if core.users == 0:
            _cores.pop(key, None)
            core.stop()


@atexit.register
def _halt_all() -> None:
    # At exit, daemon threads and loops may still hold handles: join the C
    # threads but free nothing, so that a late read sees stale values, never
    # freed memory.
    with _lock:
        for core in _cores.values():
            core.halt()


def _halt_all_in_child() -> None:
    """For a forked child that must not sample (a governor's workload): stop
    the sampler threads that were started again in it."""
    _halt_all()


def _respawn_in_child() -> None:
    # After fork() only the forking thread exists: start each sampler's thread
    # again on the same ring, so pointers held by loops stay valid.  The lock
    # may have been held by a thread that is gone.
    global _lock
    _lock = threading.Lock()
    for core in _cores.values():
        if core.ptr is not None and not core.halted:
            lib.nrg_sampler_respawn(core.ptr)


os.register_at_fork(after_in_child=_respawn_in_child)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


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
        self.period = _positive("period", meter.default_period if period is None else period)
        if self.period < MIN_PERIOD_S:
            raise ValueError(f"period must be at least {MIN_PERIOD_S:g} s, got {self.period!r}")
        if self.period > meter.max_period:
            raise ValueError(
                f"period={self.period} s is too slow for the {meter.kind} meter: its "
                f"counter can wrap twice between reads; use period <= {meter.max_period:.3g} s"
            )
        self.history = _positive("history", history)
        self._core: _Core | None = None
        self._slots: dict[tuple[float, str | None], int] = {}
        self._total_slots: dict[float, int] = {}  # the hot path's lookup
        self._published: Any = None
        self._energy0: dict[int, float] = {}

    # -- lifetime --------------------------------------------------------
    def start(self) -> Sampler:
        if self._core is None:
            self._core = _acquire(self.meter, self.period, self.history)
            self._published = self._core.published
            self._energy0 = {}
            ptr = self._core.ptr
            for d in range(-1, len(self.meter.domains)):
                self._energy0[d] = lib.nrg_sampler_energy(ptr, d)
        return self

    def stop(self) -> None:
        if self._core is not None:
            core, self._core = self._core, None
            self._slots.clear()
            self._total_slots.clear()
            self._published = None
            _release(core, (id(self.meter), self.period, self.history))

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

    def _ptr(self) -> Any:
        if self._core is None:
            raise NrgError("the sampler is not running: use `with Sampler(meter) as s:` first")
        return self._core.ptr

    # -- power -----------------------------------------------------------
    def watch(self, window: float, domain: str | None = None) -> int:
        """Have the thread publish the windowed power of ``domain`` at each
        sample; returns the slot to read in ``published``."""
        ptr = self._ptr()
        window = _positive("window", window)
        held = self._core.history if self._core else 0.0
        if window > held:
            raise ValueError(
                f"window={window} s is longer than the {held:.1f} s of history the sampler "
                f"holds; use a shorter window or Sampler(..., history={window:g})"
            )
        col = self.meter.domain_index(domain)
        rc = lib.nrg_sampler_watch(ptr, window, col)
        if rc == -errno.ENOSPC:
            raise NrgError(
                f"this sampler already publishes {lib.NRG_MAX_SLOTS} windows, one per distinct "
                "(window, domain): reuse one of the windows already in use"
            )
        slot = check(rc, "watching a power window")
        self._slots[(window, domain)] = slot
        if domain is None:
            self._total_slots[window] = slot
        return slot

    @property
    def published(self) -> Any:
        """The published powers (W) as a memoryview of doubles, indexed by
        ``watch()``'s slot; valid while the sampler runs."""
        self._ptr()
        return self._published

    def power(self, window: float = 0.1, domain: str | None = None) -> float:
        """Average power over the last ``window`` seconds, W.

        The total (``domain=None``) never adds overlapping domains.  Before
        ``window`` seconds have passed it averages over what there is, and it
        is 0 W before the second sample.
        """
        if domain is None:
            try:  # the hot path: a window already watched
                return self._published[self._total_slots[window]]  # type: ignore[no-any-return]
            except KeyError:
                pass
        slot = self._slots.get((window, domain))
        if slot is None:
            slot = self.watch(window, domain)
        return float(self._published[slot])

    def energy(self, domain: str | None = None) -> float:
        """Energy since this sampler started, J."""
        col = self.meter.domain_index(domain)
        return float(lib.nrg_sampler_energy(self._ptr(), col) - self._energy0[col])

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
        """Windowed power (W) at each sample newer than ``after`` (monotonic s)."""
        ptr = self._ptr()
        window = _positive("window", window)
        col = self.meter.domain_index(domain)
        if isinstance(after, bool) or not isinstance(after, (int, float)) or math.isnan(after):
            raise ValueError(f"after must be a time in seconds (time.monotonic()), got {after!r}")
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points must be an int >= 1, got {max_points!r}")
        t = ffi.new("double[]", max_points)
        w = ffi.new("double[]", max_points)
        n = check(lib.nrg_sampler_series(ptr, after, window, col, t, w, max_points), "series")
        return list(t[0:n]), list(w[0:n])

    @property
    def samples(self) -> int:
        """Samples taken since the C thread started."""
        return int(lib.nrg_sampler_samples(self._ptr()))

    @property
    def errors(self) -> int:
        """Reads that failed since the C thread started (they are skipped)."""
        return int(lib.nrg_sampler_errors(self._ptr()))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Sampler {self.meter.kind} period={self.period:g}s {state}>"
