"""A CPU quota on a child process, moved by feedback so that power follows the cap.

The workload runs in a forked child inside a fresh cgroup; every control
period the governor reads the power and moves the group's CPU quota (v2
``cpu.max``, v1 ``cpu.cfs_quota_us``): a software analogue of the RAPL
firmware's feedback loop.  Needs root (or a delegated cgroup).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import math
import os
import pickle
import select
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from nrgloops import _checks
from nrgloops._errors import NrgError
from nrgloops._machine import cpu_count
from nrgloops.governors import _cgroupfs, _files
from nrgloops.governors._base import (
    Governor,
    GovernorBusy,
    GovernorUnavailable,
    Trace,
    check_cap,
    check_power,
)
from nrgloops.governors._journal import Journal, undo_held
from nrgloops.governors._signals import signals_deferred, signals_raise
from nrgloops.sampler import halt_all_in_child

__all__ = ["CgroupGovernor"]

T = TypeVar("T")
_GROUP_NUMBERS = itertools.count(1)


def _set_pdeathsig() -> None:
    # The child dies with its parent (even a SIGKILLed one): no uncapped
    # workload left running.  Best effort: Linux only.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def read_exact(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``, fewer only at end of file."""
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _own_subtree(sub: Path) -> tuple[int, bool]:
    """Own a v2 parent's ``cgroup.subtree_control`` for a run: (fd holding the
    flock, whether this run must enable the cpu controller).

    A run that enables the controller owns the file alone (and disables it
    again at the end); runs that find it enabled share it, so that none of
    them disables it under another.  GovernorBusy if a run that enabled it
    is still going.
    """
    fd = _files.try_own(sub)
    if fd is not None:
        if "cpu" not in _files.read_text(sub).split():
            return fd, True
        fcntl.flock(fd, fcntl.LOCK_SH)  # a downgrade: never waits
        return fd, False
    fd = _files.try_own(sub, shared=True)
    if fd is None or "cpu" not in _files.read_text(sub).split():
        if fd is not None:
            os.close(fd)
        raise GovernorBusy(
            f"cgroup governor: another governed run ({_files.lock_holders(sub) or '?'}) "
            f"enabled the cpu controller in {sub} and disables it when it ends: wait for it"
        )
    return fd, False


class CgroupGovernor(Governor):
    """A CPU quota on a child process, moved by feedback so power follows the cap.

    Every ``control_period`` seconds it reads the power and moves the quota
    ``q`` (in CPUs) by ``gain * (cap - power) / slope``, where ``slope`` is
    the watts one more CPU of quota costs: ``watts_per_cpu`` if given, else
    learned from the first reading (power / CPUs, an overestimate, so the
    loop errs on the slow, stable side).  ``q`` stays in [0.05, CPUs]; it
    starts at all CPUs (no quota), as a firmware limit does, or at
    ``(cap - idle_w) / slope`` when both hints are given.  A power reading
    that is not a finite number leaves the quota where it is.

    Args:
        period_us: the CFS period, µs (shorter: smoother throttling).
        control_period: seconds between quota moves (default: 0.1 s, or two
            CFS periods if longer; give the power window).
        gain: share of the estimated correction applied per step.
        watts_per_cpu, idle_w: optional model hints, W.
        cgroup: (version, parent directory) to use instead of the one found
            in /proc/self/mounts.
        journal: the journal directory (default ``journal_dir()``).
    """

    name = "cgroup"
    MIN_CPUS = 0.05

    def __init__(
        self,
        period_us: int = 20_000,
        control_period: float | None = None,
        gain: float = 0.6,
        watts_per_cpu: float | None = None,
        idle_w: float | None = None,
        cgroup: tuple[int, str | os.PathLike[str]] | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        # [1 ms, 1 s]: the CFS period range the kernel accepts.
        self.period_us = _checks.count(
            "period_us", period_us, lo=1000, hi=1_000_000, what="an int number of µs"
        )
        self.control_period = (
            max(0.1, 2 * self.period_us / 1e6)
            if control_period is None
            else _checks.number("control_period", control_period, "seconds", lo=0, lo_open=True)
        )
        self.gain = _checks.number("gain", gain, lo=0, hi=1, lo_open=True)
        self.watts_per_cpu = (
            None
            if watts_per_cpu is None
            else _checks.number("watts_per_cpu", watts_per_cpu, "watts", lo=0, lo_open=True)
        )
        self.idle_w = None if idle_w is None else _checks.number("idle_w", idle_w, "watts", lo=0)
        self._where: tuple[int, Path] | None = None
        if cgroup is not None:
            spec: Any = cgroup
            if not (isinstance(spec, tuple) and len(spec) == 2) or spec[0] not in (1, 2):
                raise ValueError(
                    f"cgroup must be (version 1 or 2, parent directory), got {cgroup!r}"
                )
            self._where = (
                _checks.count("cgroup version", spec[0], lo=1, hi=2),
                Path(_checks.path("cgroup parent", spec[1])),
            )
        self.journal_dir = None if journal is None else _checks.path("journal", journal)
        self.cpus = cpu_count()

    def with_model(self, *, idle_w: float, watts_per_cpu: float) -> CgroupGovernor:
        return CgroupGovernor(
            period_us=self.period_us,
            control_period=self.control_period,
            gain=self.gain,
            watts_per_cpu=watts_per_cpu,
            idle_w=idle_w,
            cgroup=self._where,
            journal=self.journal_dir,
        )

    def where(self) -> tuple[int, Path]:
        if self._where is None:
            self._where = _cgroupfs.find_cgroup()
        return self._where

    @property
    def description(self) -> str:
        try:
            version, parent = self.where()
        except GovernorUnavailable:
            return "CPU quota of a cgroup, moved by a power feedback loop"
        knob = "cpu.max" if version == 2 else "cpu.cfs_quota_us"
        return f"cgroup v{version} CPU quota ({parent}/*/{knob}) moved by a power feedback loop"

    def check(self) -> None:
        version, parent = self.where()
        if not os.access(parent, os.W_OK):
            raise GovernorUnavailable(
                f"cgroup governor: cannot create a cgroup under {parent}: run as root "
                "(or delegate a cgroup to this user)"
            )
        if version == 2:
            sub = parent / "cgroup.subtree_control"
            if "cpu" not in _files.read_text(sub).split() and not os.access(sub, os.W_OK):
                raise GovernorUnavailable(
                    f"cgroup governor: the cpu controller is not enabled in {sub} "
                    "and it is not writable here: run as root"
                )

    # -- the group -------------------------------------------------------
    def _quota_writer(self, version: int, group: Path) -> Callable[[float], None]:
        period = self.period_us
        if version == 2:
            f = group / "cpu.max"

            def write2(cpus: float) -> None:
                q = "max" if cpus >= self.cpus else str(max(1000, int(cpus * period)))
                _files.write_text(f, f"{q} {period}")

            return write2
        f = group / "cpu.cfs_quota_us"

        def write1(cpus: float) -> None:
            q = -1 if cpus >= self.cpus else max(1000, int(cpus * period))
            _files.write_text(f, str(q))

        return write1

    @contextlib.contextmanager
    def _group(self, journal: Journal) -> Iterator[tuple[int, Path]]:
        version, parent = self.where()
        # Numbered per process, not per governor: two governors here never
        # pick the same name.
        group = parent / f"nrgloops-{os.getpid()}-{next(_GROUP_NUMBERS)}"
        sub = parent / "cgroup.subtree_control"
        sub_fd: int | None = None
        sub_key: int | None = None
        key: int | None = None
        try:
            # Each change is journalled, made, and noted as made with signals
            # held, so that a signal cannot fall between the change and the
            # note that the finally below undoes.
            with signals_deferred():
                enable = False
                if version == 2:
                    sub_fd, enable = _own_subtree(sub)
                if enable:
                    sub_key = journal.add({"op": "subtree", "path": str(sub)})
                    try:
                        _files.write_text(sub, "+cpu")
                    except OSError as exc:
                        with contextlib.suppress(NrgError):  # a stale entry is harmless
                            journal.drop(sub_key)
                        sub_key = None
                        raise GovernorUnavailable(
                            f"cgroup governor: enabling the cpu controller in {sub}: "
                            f"{exc.strerror}; run as root"
                        ) from exc
                key = journal.add({"op": "cgroup", "path": str(group), "version": version})
                try:
                    os.mkdir(group)
                except OSError as exc:
                    with contextlib.suppress(NrgError):  # a stale entry is harmless
                        journal.drop(key)
                    key = None
                    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise GovernorUnavailable(
                            f"cgroup governor: creating {group}: {exc.strerror}; run as root"
                        ) from exc
                    raise NrgError(f"cgroup governor: creating {group}: {exc.strerror}") from exc
            if version == 1:
                _files.write_text(group / "cpu.cfs_period_us", str(self.period_us))
            yield version, group
        finally:
            # Signals held: a second Ctrl-C cannot stop the undo half way.
            with signals_deferred():
                steps: list[tuple[str, Callable[[], None], int]] = []
                if key is not None:
                    steps.append(
                        (
                            f"cgroup {group} (removed)",
                            functools.partial(_cgroupfs.remove_cgroup, group),
                            key,
                        )
                    )
                if sub_key is not None:
                    steps.append(
                        (
                            f"cpu controller in {sub} (disabled again)",
                            functools.partial(_files.write_text, sub, "-cpu"),
                            sub_key,
                        )
                    )
                try:
                    undo_held("cgroup governor", steps, journal)
                finally:
                    if sub_fd is not None:
                        os.close(sub_fd)  # after the undo: the next owner sees it done

    # -- the child ---------------------------------------------------------
    @staticmethod
    def _child(go_r: int, res_w: int, workload: Callable[[], Any]) -> None:
        status = 0
        try:
            # fork() started the parent's sampler threads again in this
            # process: stop them, or the workload's CPU quota pays for them.
            halt_all_in_child()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            _set_pdeathsig()
            if read_exact(go_r, 1) != b"g":
                os._exit(3)  # the parent gave up before starting us
            try:
                payload = pickle.dumps(("ok", workload()))
            except BaseException as exc:  # reported to the parent
                payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
                status = 1
            os.write(res_w, struct.pack("<Q", len(payload)))
            view = memoryview(payload)
            while view:
                view = view[os.write(res_w, view) :]
        finally:
            os._exit(status)

    def _next_quota(self, cpus: float, cap: float, watts: float, slope: float) -> float:
        cpus += self.gain * (cap - watts) / slope
        return min(float(self.cpus), max(self.MIN_CPUS, cpus))

    def run(
        self,
        cap_w: float,
        workload: Callable[[], T],
        power: Callable[[], float] | None = None,
    ) -> Trace[T]:
        """Run ``workload`` in a child process in a fresh cgroup whose CPU quota
        follows the cap, reading ``power`` (required) every control period;
        returns the trace, the workload's result (pickled back) in ``.result``.

        ``workload`` runs in a forked child: it must not rely on threads of
        this process (make thread pools inside it).
        """
        cap = check_cap(cap_w)
        read = check_power(power, required=True, who="cgroup governor")
        assert read is not None
        dt = self.control_period
        journal = Journal(self.journal_dir)
        times: list[float] = []
        watts_seen: list[float] = []
        quotas: list[float] = []
        with signals_raise(), self._group(journal) as (version, group):
            set_quota = self._quota_writer(version, group)
            go_r, go_w = os.pipe()
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                os.close(go_w)
                os.close(res_r)
                self._child(go_r, res_w, workload)
            os.close(go_r)
            os.close(res_w)
            reaped = False
            try:
                _files.write_text(group / "cgroup.procs", str(pid))
                slope = self.watts_per_cpu
                cpus = float(self.cpus)
                if slope and self.idle_w is not None:
                    cpus = min(float(self.cpus), max(self.MIN_CPUS, (cap - self.idle_w) / slope))
                set_quota(cpus)
                times.append(time.monotonic())  # the first step: where the quota starts
                watts_seen.append(float(read()))
                quotas.append(cpus)
                os.write(go_w, b"g")
                next_t = time.monotonic() + dt
                while True:
                    wait = max(0.0, next_t - time.monotonic())
                    ready, _, _ = select.select([res_r], [], [], wait)
                    if ready:
                        break
                    next_t += dt
                    w = float(read())
                    if math.isfinite(w):  # an unknown power: hold the quota
                        if slope is None:
                            slope = max(w / max(cpus, self.MIN_CPUS), 1e-3)
                        cpus = self._next_quota(cpus, cap, w, slope)
                        set_quota(cpus)
                    times.append(time.monotonic())
                    watts_seen.append(w)
                    quotas.append(cpus)
                head = read_exact(res_r, 8)
                size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                body = read_exact(res_r, size) if size else b""
                os.waitpid(pid, 0)
                reaped = True
            finally:
                with signals_deferred():  # a second Ctrl-C cannot leave the child running
                    os.close(go_w)
                    os.close(res_r)
                    if not reaped:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, 0)
        if not body:
            raise NrgError("cgroup governor: the workload's process died without a result")
        status, value = pickle.loads(body)
        if status != "ok":
            raise NrgError(f"cgroup governor: the workload failed in its process: {value}")
        return Trace(value, "quota_cpus", times, watts_seen, quotas)
