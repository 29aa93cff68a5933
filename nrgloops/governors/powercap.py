"""The RAPL long-term power limit (PL1) of every package, through powercap.

The mechanism of the Intel power governor: ``constraint_<i>_power_limit_uw``
of the ``long_term`` constraint of each ``intel-rapl:N`` package zone under
``/sys/class/powercap``; the cap is split evenly between packages.  Needs
RAPL (Intel) and root; a limit the BIOS locked refuses the write (EACCES).
The firmware holds the limit; this governor only sets it, owns it for the
run (one run per limit) and puts back what was there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nrgloops import _checks
from nrgloops._errors import NrgError
from nrgloops.governors import _files
from nrgloops.governors._base import (
    Governor,
    GovernorUnavailable,
    Trace,
    check_cap,
    check_power,
)
from nrgloops.governors._journal import Journal, undo_held
from nrgloops.governors._limits import MIN_ZONE_UW, max_power_uw, restorable_problem
from nrgloops.governors._signals import signals_deferred, signals_raise

__all__ = ["PowercapGovernor", "Zone"]

T = TypeVar("T")

_PKG_ZONE = re.compile(r"^intel-rapl:(\d+)$")


@dataclass
class Zone:
    """A package zone: its directory, name, long_term limit file and the
    greatest limit it accepts (µW; from ``max_power_uw``, else the field's)."""

    path: Path
    name: str
    limit: Path
    max_power_uw: int


def _zone_order(name: str) -> tuple[int, str]:
    m = _PKG_ZONE.match(name)
    return (int(m.group(1)) if m else 1 << 30, name)


class PowercapGovernor(Governor):
    """The RAPL power limit (PL1) of every package, through powercap sysfs.

    Args:
        root: the powercap class directory (a fake tree in tests).
        journal: the journal directory (default ``journal_dir()``).
        record_period: seconds between the trace's power readings, when
            ``run`` is given ``power``.
    """

    name = "powercap"

    def __init__(
        self,
        root: str | os.PathLike[str] = "/sys/class/powercap",
        journal: str | os.PathLike[str] | None = None,
        record_period: float = 0.1,
    ) -> None:
        self.root = Path(_checks.path("root", root))
        self.journal_dir = None if journal is None else _checks.path("journal", journal)
        self.record_period = _checks.number(
            "record_period", record_period, "seconds", lo=0.0, lo_open=True
        )

    @property
    def description(self) -> str:
        return f"RAPL long-term (PL1) power limit of each package under {self.root}"

    def zones(self) -> list[Zone]:
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
                name = _files.read_text(d / "name")
            except OSError:
                continue
            if not name.startswith("package"):
                continue  # psys and others: not the package limit
            limit = self._long_term(d)
            if limit is None:
                continue
            found.append(Zone(d, name, limit, max_power_uw(limit)))
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
                if _files.read_text(zone / f"constraint_{i}_name") == "long_term":
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

    def cap_range(self) -> tuple[float, float]:
        """The caps the packages accept, W: at least 1 W each, at most the
        smallest ``max_power_uw`` each (the cap is split evenly)."""
        zones = self.zones()
        n = len(zones)
        return (n * MIN_ZONE_UW / 1e6, n * min(z.max_power_uw for z in zones) / 1e6)

    def _per_zone_uw(self, cap: float, zones: list[Zone]) -> int:
        """The cap's share of each zone, µW; ValueError if a zone cannot take it."""
        per_zone_uw = int(round(cap * 1e6 / len(zones)))
        for z in zones:
            if not MIN_ZONE_UW <= per_zone_uw <= z.max_power_uw:
                lo, hi = self.cap_range()
                raise ValueError(
                    f"cap_w must be in [{lo:g}, {hi:g}] W for the {len(zones)} package(s) "
                    f"under {self.root} (each takes an even share, between "
                    f"{MIN_ZONE_UW / 1e6:g} W and its max_power_uw, {z.max_power_uw / 1e6:g} W "
                    f"for {z.name}), got {cap:g} W; nothing was changed"
                )
        return per_zone_uw

    @contextlib.contextmanager
    def applied(self, cap_w: float) -> Iterator[list[tuple[Path, int]]]:
        """Hold the package limits at ``cap_w`` (split evenly) while inside;
        yields [(limit file, limit µW)]."""
        cap = check_cap(cap_w)
        zones = self.zones()
        per_zone_uw = self._per_zone_uw(cap, zones)  # refused before anything changes
        journal = Journal(self.journal_dir)
        held: list[tuple[Path, str, int]] = []  # (file, old text, journal key)
        with contextlib.ExitStack() as owners:
            # Own every file first: a busy one refuses the run before any change.
            for z in zones:
                for f in (z.path / "enabled", z.limit):
                    owners.enter_context(_files.owned(f, "powercap governor"))
            try:
                with signals_raise():
                    for z in zones:
                        self._hold(z.path / "enabled", "1", journal, held)
                        self._hold(z.limit, str(per_zone_uw), journal, held)
                    yield [(z.limit, per_zone_uw) for z in zones]
            finally:
                # Signals held: a second Ctrl-C cannot stop the restore half way.
                with signals_deferred():
                    undo_held(
                        "powercap governor",
                        [
                            (
                                f"{path} (back to {old})",
                                functools.partial(_files.write_text, path, old),
                                key,
                            )
                            for path, old, key in reversed(held)
                        ],
                        journal,
                    )

    @staticmethod
    def _hold(path: Path, value: str, journal: Journal, held: list[tuple[Path, str, int]]) -> None:
        try:
            now = _files.read_text(path)
        except FileNotFoundError:
            return  # a zone without "enabled": nothing to switch
        # A run that died holding this file left its value here, and its
        # journal says what was there before: that is the value to put back,
        # if the file can have held it (never one the kernel would mask).
        real = os.path.realpath(path)
        old = (
            journal.inherited(str(path), accept=lambda v: restorable_problem(real, v) is None)
            or now
        )
        if now == value and old == value:
            return
        # Journal, write and note it with signals held: a signal cannot fall
        # between the write and the note that the restore reads.
        with signals_deferred():
            key = journal.add({"op": "write", "path": str(path), "old": old})
            try:
                _files.write_text(path, value)
            except OSError as exc:
                # Not changed.  If the journal cannot forget it, the entry left
                # restores the original value: harmless.
                with contextlib.suppress(NrgError):
                    journal.drop(key)
                err = exc
            else:
                held.append((path, old, key))
                journal.retire_others(str(path))  # this journal now holds the original
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
        power: Callable[[], float] | None = None,
    ) -> Trace[T]:
        """Run ``workload`` here with the limits at ``cap_w``; the trace records
        ``power`` (if given) every ``record_period`` seconds beside the limit."""
        read = check_power(power, required=False, who="powercap governor")
        times: list[float] = []
        watts: list[float] = []
        limits: list[float] = []
        with self.applied(cap_w) as held:
            limit_w = sum(uw for _, uw in held) / 1e6
            stop = threading.Event()

            def record() -> None:
                while True:
                    try:
                        w = float(read()) if read is not None else math.nan
                    except Exception:  # a failing reading must not end the run
                        w = math.nan
                    times.append(time.monotonic())
                    watts.append(w)
                    limits.append(limit_w)
                    if read is None or stop.wait(self.record_period):
                        return

            recorder = threading.Thread(target=record, name="nrg-pl1-trace", daemon=True)
            recorder.start()
            try:
                result = workload()
            finally:
                stop.set()
                recorder.join()
        return Trace(result, "limit_w", times, watts, limits)
