"""System-level power governors: the baselines an NRG-loop is compared with.

A governor caps a whole workload from outside, without knowing what it does:

* ``powercap``: writes the long-term (PL1) power limit,
  ``constraint_0_power_limit_uw``, of every RAPL package zone under
  ``/sys/class/powercap`` -- the mechanism of the Intel power governor.  The
  cap is split evenly between packages.  Needs RAPL (Intel) and root; a limit
  the BIOS locked refuses the write with EACCES.
* ``cgroup``: runs the workload in a child process inside a fresh cgroup and
  moves its CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) every
  control period so that the measured (or estimated) power follows the cap:
  a software analogue of the RAPL firmware's feedback loop.  Needs root.

Every change is explicit and reversible.  Before a governor changes
anything it writes what it is about to change to a journal file, and it
undoes the change -- and removes the journal entry -- on success, on an
exception, on Ctrl-C (SIGINT) and on SIGTERM/SIGHUP.  If the process is
killed outright (SIGKILL, power loss), ``nrgloops governor restore`` reads
the journals of runs that are gone and undoes what they left.

Journal files (one per run, ``<pid>-<ns>.json``) live in, in this order:
``$NRGLOOPS_JOURNAL_DIR``; ``/run/nrgloops`` when running as root;
``$XDG_RUNTIME_DIR/nrgloops``; ``/tmp/nrgloops-<uid>``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import numbers
import operator
import os
import pickle
import re
import select
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from nrgloops._errors import NrgError
from nrgloops.bench.search import cpu_count
from nrgloops.sampler import Sampler, _halt_all_in_child

__all__ = [
    "CgroupGovernor",
    "Governor",
    "GovernorUnavailable",
    "Journal",
    "PowercapGovernor",
    "RestoreResult",
    "Terminated",
    "journal_dir",
    "open_governor",
    "probe_governors",
    "restore",
    "signals_raise",
]

T = TypeVar("T")

GOVERNORS = ("auto", "powercap", "cgroup", "none")
_PKG_ZONE = re.compile(r"^intel-rapl:(\d+)$")


class GovernorUnavailable(NrgError):
    """A governor cannot be used here; the message says why and what to do."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP while a governor (or
    the CLI) holds a change, so that ``finally`` blocks restore it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


# ---------------------------------------------------------------------------
# signals


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _set_handlers(pairs: list[tuple[int, Any]]) -> None:
    """Install each (signal, handler); each in a ``finally`` of the one
    before, so that a handler raising as soon as it is back (a Ctrl-C
    arriving now) cannot leave the others unrestored."""
    if not pairs:
        return
    sig, handler = pairs[0]
    try:
        signal.signal(sig, handler)
    finally:
        _set_handlers(pairs[1:])


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise ``Terminated`` in the main thread
    (SIGINT already raises KeyboardInterrupt), so cleanup code runs.

    A handler that is already installed (not the default action) is left
    alone; outside the main thread nothing is installed (the journal is the
    fallback there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: list[tuple[int, Any]] = []
    try:
        sig: int
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                saved.append((sig, signal.signal(sig, _raise_terminated)))
        yield
    finally:
        _set_handlers(saved)


_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Handlers whose only effect is an exception in the main thread: redundant
# while the main thread is already unwinding with one.
_RAISING: tuple[Any, ...] = (signal.default_int_handler, _raise_terminated)


class _signals_deferred:  # used like the function it replaced
    """Hold SIGINT/SIGTERM/SIGHUP across a change and its bookkeeping, or
    across a restore, so that a signal (a second Ctrl-C) cannot cut either
    in half; they are delivered again when the block ends.

    Masking the signals (``pthread_sigmask``) is not enough: the mask is per
    thread, and the kernel then hands a process-directed signal to another
    thread (a worker, a C thread), after which CPython runs the Python
    handler in the main thread anyway, mid-block.  So for the block's length
    the Python handlers are swapped for ones that only record the signal; the
    old ones come back and the recorded signals are raised again after it.
    If the block itself raises, a recorded signal whose handler would only
    raise too (KeyboardInterrupt, ``Terminated``) is dropped: the main thread
    is already unwinding, and replacing the exception would hide it (a
    failed restore).  Signals set to be ignored, or whose handler was not
    installed from Python, are left as they are.  Nested blocks are one
    block; outside the main thread (where Python handlers never run) it does
    nothing.
    """

    _depth = 0  # touched by the main thread only

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []
        self._pending: list[int] = []
        self._active = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._pending:  # pending signals coalesce, as in the kernel
            self._pending.append(signum)

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        cls = type(self)
        cls._depth += 1
        self._active = True
        if cls._depth > 1:
            return  # the outer block holds them
        try:
            for sig in _DEFERRED:
                old = signal.getsignal(sig)
                if old is None or old is signal.SIG_IGN:
                    continue
                # Saved before it is swapped: a signal between the two runs the
                # old handler, before the block has begun.
                self._saved.append((sig, old))
                signal.signal(sig, self._record)
        except BaseException as exc:
            # A signal raised before all were swapped: put back those that were.
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if not self._active:
            return
        cls = type(self)
        cls._depth -= 1
        if cls._depth > 0:
            return
        saved, self._saved = self._saved, []
        try:
            _set_handlers(saved)
        finally:
            old = dict(saved)
            for sig in self._pending:
                if kind is not None and old.get(sig) in _RAISING:
                    continue
                signal.raise_signal(sig)  # runs the restored handler here


# ---------------------------------------------------------------------------
# the journal


def journal_dir() -> Path:
    """Where journal files go (see the module's docstring)."""
    env = os.environ.get("NRGLOOPS_JOURNAL_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path("/run/nrgloops")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "nrgloops"
    return Path(f"/tmp/nrgloops-{os.getuid()}")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat):
    with the pid it names a process uniquely (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    now = _start_time(pid)
    return now is not None and (started is None or now == started)


class Journal:
    """The changes one run holds, written to disk before each change is made.

    An entry is a dict with ``op``: ``"write"`` (``path`` held ``old``
    before), ``"cgroup"`` (the run created the cgroup ``path``) or
    ``"subtree"`` (the run enabled the cpu controller in ``path``, a v2
    ``cgroup.subtree_control``).  The file exists only while entries do.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else journal_dir()
        self.path = self.directory / f"{os.getpid()}-{time.time_ns()}.json"
        self._entries: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> int:
        """Record a change about to be made; returns its id for ``drop``."""
        with self._lock:
            key = self._next
            self._next += 1
            self._entries[key] = entry
            try:
                self._flush()
            except NrgError:
                del self._entries[key]  # not on disk: the change must not be made
                raise
            return key

    def drop(self, key: int) -> None:
        """The change was undone: forget it.

        Raises NrgError if the file cannot be written; the key is forgotten
        anyway (the file may then list a change already undone).
        """
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._flush()

    @property
    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries.values())

    def _flush(self) -> None:
        if not self._entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            doc = {
                "pid": os.getpid(),
                "started": _start_time(os.getpid()),
                "written": time.time(),
                "changes": list(self._entries.values()),
            }
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: a reader sees the old or the new list
        except OSError as exc:
            raise NrgError(
                f"cannot write the governor journal {self.path}: {exc.strerror}; set "
                "NRGLOOPS_JOURNAL_DIR to a writable directory"
            ) from exc


@dataclass
class RestoreResult:
    """What ``restore`` did: one line per change undone, per error, per run skipped."""

    undone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _undo_held(
    what: str, steps: list[tuple[str, Callable[[], None], int]], journal: Journal
) -> None:
    """Undo every change a run holds, then forget the undone ones in the journal.

    ``steps`` are (what was restored, how, journal key), latest change first.
    Every step runs even when one before it failed; the journal is written
    only after all of them, so that a journal that cannot be written (a full
    disk) cannot leave a limit changed.  Raises NrgError saying what was
    restored, what was not, and whether the journal is stale.
    """
    done: list[tuple[str, int]] = []
    failed: list[str] = []
    for label, undo, key in steps:
        try:
            undo()
        except Exception as exc:  # every other step still runs
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failed.append(f"{label}: {why}")
        else:
            done.append((label, key))
    stale: BaseException | None = None
    for _, key in done:
        try:
            journal.drop(key)
        except (OSError, NrgError) as exc:
            stale = exc
    if not failed and stale is None:
        return
    parts = []
    if failed:
        parts.append(
            "could not undo "
            + "; ".join(failed)
            + f" (the journal {journal.path} keeps what was not undone: run "
            "`nrgloops governor restore`)"
        )
    if done:
        parts.append("undone: " + ", ".join(label for label, _ in done))
    if stale is not None:
        parts.append(
            f"but the journal {journal.path} could not be updated ({stale}): it may be "
            "stale, still listing changes already undone, which `nrgloops governor "
            "restore` would undo again (writing the same original values)"
        )
    raise NrgError(f"{what}: " + "; ".join(parts))


def _undo(entry: dict[str, Any]) -> str:
    """Undo one journal entry; returns what was done, raises OSError."""
    op, path = entry.get("op"), str(entry.get("path"))
    if op == "write":
        _write_text(path, str(entry["old"]))
        return f"restored {path} to {entry['old']!r}"
    if op == "subtree":
        _write_text(path, "-cpu")
        return f"disabled the cpu controller again in {path}"
    if op == "cgroup":
        if not os.path.isdir(path):
            return f"cgroup {path} was already gone"
        _empty_cgroup(path)
        os.rmdir(path)
        return f"removed cgroup {path} (after stopping the processes left in it)"
    raise OSError(errno.EINVAL, f"unknown journal entry {entry!r}")


def restore(directory: str | os.PathLike[str] | None = None, force: bool = False) -> RestoreResult:
    """Undo the changes left by runs that died without restoring them.

    Journals of runs still alive are skipped (they restore themselves)
    unless ``force``.  A journal whose changes were all undone is removed;
    one with failures keeps the failed entries.
    """
    out = RestoreResult()
    where = Path(directory) if directory is not None else journal_dir()
    if not where.is_dir():
        return out
    for path in sorted(where.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            changes = list(doc["changes"])
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.errors.append(f"{path}: unreadable journal ({exc}); remove it by hand")
            continue
        if pid != os.getpid() and _alive(pid, doc.get("started")) and not force:
            out.skipped.append(
                f"{path}: run {pid} is still alive and restores its own changes "
                "(--force to undo them anyway)"
            )
            continue
        # Signals held per journal: a Ctrl-C cannot leave one half undone
        # with its file still listing what was undone.
        with _signals_deferred():
            left: list[dict[str, Any]] = []
            for entry in reversed(changes):  # undo in the opposite order
                try:
                    out.undone.append(_undo(entry))
                except OSError as exc:
                    out.errors.append(f"{entry.get('path')}: {exc.strerror or exc}")
                    left.insert(0, entry)
            try:
                if left:
                    doc["changes"] = left
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
                    os.replace(tmp, path)
                else:
                    path.unlink()
            except OSError as exc:
                out.errors.append(
                    f"{path}: could not be updated ({exc.strerror or exc}): it is stale, still "
                    "listing changes undone above, which a later restore would undo again "
                    "(writing the same original values)"
                )
    return out


# ---------------------------------------------------------------------------
# file helpers (one place, so tests can inject a locked limit)


def _read_text(path: str | os.PathLike[str]) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip()


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    # One write() of the value and a newline, as `echo value > file` does:
    # sysfs and cgroupfs parse it whole; O_TRUNC matters only for fake trees.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# governors


class Governor:
    """What the benchmark needs of a governor."""

    name = "none"

    @property
    def description(self) -> str:
        return self.name

    def check(self) -> None:
        """Raise GovernorUnavailable (why, and how to fix it) if it cannot run here."""

    def run(
        self,
        cap_w: float,
        workload: Callable[[], T],
        sampler: Sampler,
        window: float,
    ) -> T:
        """Run ``workload`` under a cap of ``cap_w`` watts and return its result;
        the system is as before when this returns or raises."""
        raise NotImplementedError


def _number(
    name: str, value: Any, unit: str = "", *, zero: bool = False, top: float | None = None
) -> float:
    """``value`` as a float, checked: finite, > 0 (>= 0 with ``zero``), <= ``top``."""
    of = f" of {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{of}, not {type(value).__name__}")
    v = float(value)
    low_ok = v >= 0 if zero else v > 0
    if not (math.isfinite(v) and low_ok and (top is None or v <= top)):
        span = ("[0, " if zero else "(0, ") + (f"{top:g}]" if top is not None else "inf)")
        raise ValueError(f"{name} must be a finite number{of} in {span}, got {value!r}")
    return v


def _integer(name: str, value: Any, unit: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (any integer type; not bool, not float)."""
    of = f" of {unit}" if unit else ""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int{of} in [{low}, {high}], not {type(value).__name__}"
        ) from None
    if not low <= v <= high:
        raise ValueError(f"{name} must be an int{of} in [{low}, {high}], got {v}")
    return v


def _cap(cap_w: Any) -> float:
    return _number("cap_w", cap_w, "watts")


@dataclass
class _Zone:
    path: Path
    name: str
    limit: Path  # the long_term constraint's power_limit_uw
    max_power_uw: int


class PowercapGovernor(Governor):
    """The RAPL power limit (PL1) of every package, through powercap sysfs."""

    name = "powercap"

    def __init__(
        self,
        root: str | os.PathLike[str] = "/sys/class/powercap",
        journal: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.journal_dir = journal

    @property
    def description(self) -> str:
        return f"RAPL long-term (PL1) power limit of each package under {self.root}"

    def zones(self) -> list[_Zone]:
        """The package zones and their long_term constraint files."""
        if not self.root.is_dir():
            raise GovernorUnavailable(
                f"powercap governor: {self.root} does not exist: no RAPL power-limit "
                "interface here (a VM, an AMD CPU, or load it with `modprobe intel_rapl_msr`)"
            )
        found = []
        for entry in sorted(os.listdir(self.root), key=_zone_order):
            if not _PKG_ZONE.match(entry):
                continue
            d = self.root / entry
            try:
                name = _read_text(d / "name")
            except OSError:
                continue
            if not name.startswith("package"):
                continue  # psys and others: not the package limit
            limit = self._long_term(d)
            if limit is None:
                continue
            try:
                max_uw = int(_read_text(Path(str(limit).replace("power_limit", "max_power"))))
            except (OSError, ValueError):
                max_uw = 0
            found.append(_Zone(d, name, limit, max_uw))
        if not found:
            raise GovernorUnavailable(
                f"powercap governor: no RAPL package zone (intel-rapl:N named package-N "
                f"with a long_term constraint) under {self.root}"
            )
        return found

    @staticmethod
    def _long_term(zone: Path) -> Path | None:
        for i in range(8):
            try:
                if _read_text(zone / f"constraint_{i}_name") == "long_term":
                    return zone / f"constraint_{i}_power_limit_uw"
            except OSError:
                break
        first = zone / "constraint_0_power_limit_uw"
        return first if first.exists() else None

    def check(self) -> None:
        for z in self.zones():
            if not os.access(z.limit, os.W_OK):
                raise GovernorUnavailable(
                    f"powercap governor: {z.limit} is not writable: run as root"
                )

    @contextlib.contextmanager
    def applied(self, cap_w: float) -> Iterator[list[tuple[Path, int]]]:
        """Hold the package limits at ``cap_w`` (split evenly) while inside;
        yields [(limit file, limit µW)]."""
        cap = _cap(cap_w)
        zones = self.zones()
        per_zone_uw = int(round(cap * 1e6 / len(zones)))
        journal = Journal(self.journal_dir)
        held: list[tuple[Path, str, int]] = []  # (file, old text, journal key)
        try:
            with signals_raise():
                for z in zones:
                    self._hold(z.path / "enabled", "1", journal, held)
                    self._hold(z.limit, str(per_zone_uw), journal, held)
                yield [(z.limit, per_zone_uw) for z in zones]
        finally:
            # Signals held: a second Ctrl-C cannot stop the restore half way.
            with _signals_deferred():
                _undo_held(
                    "powercap governor",
                    [
                        (f"{path} (back to {old})", functools.partial(_write_text, path, old), key)
                        for path, old, key in reversed(held)
                    ],
                    journal,
                )

    @staticmethod
    def _hold(path: Path, value: str, journal: Journal, held: list[tuple[Path, str, int]]) -> None:
        try:
            old = _read_text(path)
        except FileNotFoundError:
            return  # a zone without "enabled": nothing to switch
        if old == value:
            return
        # Journal, write and note it with signals held: a signal cannot fall
        # between the write and the note that the restore reads.
        with _signals_deferred():
            key = journal.add({"op": "write", "path": str(path), "old": old})
            try:
                _write_text(path, value)
            except OSError as exc:
                # Not changed.  If the journal cannot forget it, the entry left
                # restores the value the file still holds: harmless.
                with contextlib.suppress(NrgError):
                    journal.drop(key)
                err = exc
            else:
                held.append((path, old, key))
                return
        if err.errno in (errno.EACCES, errno.EPERM) and os.geteuid() == 0:
            raise GovernorUnavailable(
                f"powercap governor: writing {path} was refused ({err.strerror}): the "
                "BIOS locked this power limit (the lock bit of MSR_PKG_POWER_LIMIT); "
                "unlock it in the firmware setup, or use --governor cgroup"
            ) from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise GovernorUnavailable(
                f"powercap governor: writing {path} was refused ({err.strerror}): run as root"
            ) from err
        raise NrgError(f"powercap governor: writing {path}: {err.strerror}") from err

    def run(
        self,
        cap_w: float,
        workload: Callable[[], T],
        sampler: Sampler,
        window: float,
    ) -> T:
        with self.applied(cap_w):
            return workload()


def _zone_order(name: str) -> tuple[int, str]:
    m = _PKG_ZONE.match(name)
    return (int(m.group(1)) if m else 1 << 30, name)


# ---------------------------------------------------------------------------
# cgroup


@dataclass
class CgroupTrace:
    """The cgroup governor's control record: times (monotonic s), power (W)
    and the quota it set (CPUs) at each control step."""

    times: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    quota_cpus: list[float] = field(default_factory=list)


def _find_cgroup(mounts: str = "/proc/self/mounts") -> tuple[int, Path]:
    """(version, directory under which to create groups) of the cpu controller."""
    v1: Path | None = None
    v2: list[Path] = []
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError as exc:
        raise GovernorUnavailable(f"cgroup governor: cannot read {mounts}: {exc.strerror}") from exc
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        where, fstype, options = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup2":
            v2.append(Path(where))
        elif fstype == "cgroup" and "cpu" in options and v1 is None:
            v1 = Path(where)
    for root in v2:
        try:
            if "cpu" in _read_text(root / "cgroup.controllers").split():
                return 2, root
        except OSError:
            continue
    if v1 is not None:
        return 1, v1
    raise GovernorUnavailable(
        "cgroup governor: no cgroup hierarchy with the cpu controller is mounted "
        "(v2 with `cpu` in cgroup.controllers, or v1 `-o cpu`); mount one, e.g. "
        "`mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu`"
    )


def _empty_cgroup(path: str, timeout: float = 5.0) -> None:
    """Kill every process left in a cgroup we created and wait for it to empty."""
    procs = os.path.join(path, "cgroup.procs")
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in _read_text(procs).split()]
        except FileNotFoundError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"processes {pids} stay in {path}")
        time.sleep(0.02)


def _rmdir_retry(path: Path) -> None:
    # An emptied cgroup can stay busy for a moment while the kernel lets go.
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    os.rmdir(path)


def _remove_cgroup(group: Path) -> None:
    _empty_cgroup(str(group))
    _rmdir_retry(group)


def _set_pdeathsig() -> None:
    # The child dies with its parent (even a SIGKILLed one): no uncapped
    # workload left running.  Best effort: Linux only.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class CgroupGovernor(Governor):
    """A CPU quota on a child process, moved by feedback so power follows the cap.

    Every ``control_period`` seconds it reads the windowed power and moves the
    quota ``q`` (in CPUs) by ``gain * (cap - power) / slope``, where ``slope``
    is the watts one more CPU of quota costs: ``watts_per_cpu`` if given,
    else learned from the first reading (power / CPUs, an overestimate, so
    the loop errs on the slow, stable side).  ``q`` stays in [0.05, CPUs];
    it starts at all CPUs (no quota), as a firmware limit does, or at
    ``(cap - idle_w) / slope`` when both hints are given.

    Args:
        period_us: the CFS period, µs (shorter: smoother throttling).
        control_period: seconds between quota moves (default: the power window).
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
        self.period_us = _integer("period_us", period_us, "µs", 1000, 1_000_000)
        self.control_period = (
            None if control_period is None else _number("control_period", control_period, "seconds")
        )
        self.gain = _number("gain", gain, top=1.0)
        self.watts_per_cpu = (
            None if watts_per_cpu is None else _number("watts_per_cpu", watts_per_cpu, "watts")
        )
        self.idle_w = None if idle_w is None else _number("idle_w", idle_w, "watts", zero=True)
        self._where: tuple[int, Path] | None = None
        if cgroup is not None:
            spec: Any = cgroup
            if not (isinstance(spec, tuple) and len(spec) == 2) or spec[0] not in (1, 2):
                raise ValueError(
                    f"cgroup must be (version 1 or 2, parent directory), got {cgroup!r}"
                )
            self._where = (_integer("cgroup version", spec[0], "", 1, 2), Path(spec[1]))
        self.journal_dir = journal
        self.cpus = cpu_count()
        self.trace = CgroupTrace()
        self._n = 0

    def where(self) -> tuple[int, Path]:
        if self._where is None:
            self._where = _find_cgroup()
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
            if "cpu" not in _read_text(sub).split() and not os.access(sub, os.W_OK):
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
                _write_text(f, f"{q} {period}")

            return write2
        f = group / "cpu.cfs_quota_us"

        def write1(cpus: float) -> None:
            q = -1 if cpus >= self.cpus else max(1000, int(cpus * period))
            _write_text(f, str(q))

        return write1

    @contextlib.contextmanager
    def _group(self, journal: Journal) -> Iterator[tuple[int, Path]]:
        version, parent = self.where()
        self._n += 1
        group = parent / f"nrgloops-{os.getpid()}-{self._n}"
        sub = parent / "cgroup.subtree_control"
        sub_key: int | None = None
        key: int | None = None
        try:
            # Each change is journalled, made, and noted as made with signals
            # held, so that a signal cannot fall between the change and the
            # note that the finally below undoes.
            with _signals_deferred():
                if version == 2 and "cpu" not in _read_text(sub).split():
                    sub_key = journal.add({"op": "subtree", "path": str(sub)})
                    try:
                        _write_text(sub, "+cpu")
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
                _write_text(group / "cpu.cfs_period_us", str(self.period_us))
            yield version, group
        finally:
            # Signals held: a second Ctrl-C cannot stop the undo half way.
            with _signals_deferred():
                steps: list[tuple[str, Callable[[], None], int]] = []
                if key is not None:
                    steps.append(
                        (f"cgroup {group} (removed)", functools.partial(_remove_cgroup, group), key)
                    )
                if sub_key is not None:
                    steps.append(
                        (
                            f"cpu controller in {sub} (disabled again)",
                            functools.partial(_write_text, sub, "-cpu"),
                            sub_key,
                        )
                    )
                _undo_held("cgroup governor", steps, journal)

    # -- the child ---------------------------------------------------------
    @staticmethod
    def _child(go_r: int, res_w: int, workload: Callable[[], Any]) -> None:
        status = 0
        try:
            # fork() started the parent's sampler threads again in this
            # process: stop them, or the workload's CPU quota pays for them.
            _halt_all_in_child()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            _set_pdeathsig()
            if _read_exact(go_r, 1) != b"g":
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

    def run(
        self,
        cap_w: float,
        workload: Callable[[], T],
        sampler: Sampler,
        window: float,
    ) -> T:
        """Run ``workload`` in a child process in a fresh cgroup whose CPU quota
        follows the cap; returns the workload's result (pickled back).

        ``workload`` runs in a forked child: it must not rely on threads of
        this process (make thread pools inside it).
        """
        cap = _cap(cap_w)
        window = _number("window", window, "seconds")
        dt = self.control_period or max(window, 2 * self.period_us / 1e6)
        journal = Journal(self.journal_dir)
        self.trace = trace = CgroupTrace()
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
                _write_text(group / "cgroup.procs", str(pid))
                slope = self.watts_per_cpu
                cpus = float(self.cpus)
                if slope and self.idle_w is not None:
                    cpus = min(float(self.cpus), max(self.MIN_CPUS, (cap - self.idle_w) / slope))
                set_quota(cpus)
                os.write(go_w, b"g")
                next_t = time.monotonic() + dt
                while True:
                    wait = max(0.0, next_t - time.monotonic())
                    ready, _, _ = select.select([res_r], [], [], wait)
                    if ready:
                        break
                    next_t += dt
                    power = sampler.power(window)
                    if slope is None:
                        slope = max(power / max(cpus, self.MIN_CPUS), 1e-3)
                    cpus += self.gain * (cap - power) / slope
                    cpus = min(float(self.cpus), max(self.MIN_CPUS, cpus))
                    set_quota(cpus)
                    trace.times.append(time.monotonic())
                    trace.power_w.append(power)
                    trace.quota_cpus.append(cpus)
                head = _read_exact(res_r, 8)
                size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                body = _read_exact(res_r, size) if size else b""
                os.waitpid(pid, 0)
                reaped = True
            finally:
                with _signals_deferred():  # a second Ctrl-C cannot leave the child running
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
        return value  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# choosing one


def probe_governors(powercap_root: str = "/sys/class/powercap") -> dict[str, str | None]:
    """Each governor -> None when usable here, else why not and how to fix it."""
    out: dict[str, str | None] = {}
    for gov in (PowercapGovernor(powercap_root), CgroupGovernor()):
        try:
            gov.check()
            out[gov.name] = None
        except GovernorUnavailable as exc:
            out[gov.name] = str(exc)
        except OSError as exc:
            out[gov.name] = f"{gov.name} governor: {exc}"
    return out


def open_governor(
    kind: str = "auto",
    powercap_root: str = "/sys/class/powercap",
    journal: str | os.PathLike[str] | None = None,
    **cgroup_options: Any,
) -> tuple[Governor | None, str]:
    """The governor to use and a line saying which and why.

    ``"auto"`` picks powercap where it can write the limits, else cgroup, else
    none (returns None and the reasons).  An explicit kind that cannot run
    here raises GovernorUnavailable; ``"none"`` returns None.
    ``cgroup_options`` go to CgroupGovernor (e.g. ``watts_per_cpu``).
    """
    if not isinstance(kind, str):
        raise TypeError(
            f"governor must be one of {', '.join(GOVERNORS)} (a str), not {type(kind).__name__}"
        )
    if kind not in GOVERNORS:
        raise ValueError(f"governor must be one of {', '.join(GOVERNORS)}, got {kind!r}")
    if kind == "none":
        return None, "no governor (--governor none)"
    if kind in ("powercap", "cgroup"):
        gov: Governor = (
            PowercapGovernor(powercap_root, journal=journal)
            if kind == "powercap"
            else CgroupGovernor(journal=journal, **cgroup_options)
        )
        gov.check()
        return gov, f"{kind}: {gov.description}"
    reasons = probe_governors(powercap_root)
    if reasons["powercap"] is None:
        gov = PowercapGovernor(powercap_root, journal=journal)
        return gov, f"powercap: {gov.description}"
    if reasons["cgroup"] is None:
        gov = CgroupGovernor(journal=journal, **cgroup_options)
        return gov, (f"cgroup: {gov.description} (powercap refused: {reasons['powercap']})")
    return None, "no governor can run here: " + "; ".join(str(r) for r in reasons.values())
