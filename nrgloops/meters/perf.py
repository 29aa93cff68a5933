"""The perf meter: the kernel's ``power`` PMU (arch/x86/events/rapl.c).

sysfs describes it under ``/sys/bus/event_source/devices/power``:

* ``type``: the PMU's perf type number;
* ``cpumask``: one CPU per package (die), in the kernel's CPU list format;
* ``events/energy-pkg`` = ``event=0x02`` (also ``energy-cores`` 0x01,
  ``energy-ram`` 0x03, ``energy-gpu`` 0x04, ``energy-psys`` 0x05), with
  ``events/<name>.scale`` (2^-32 J) and ``events/<name>.unit`` (Joules);
* ``format/event``: where the event number goes (``config:0-7``).

The counts are 64 bits and the kernel undoes the hardware wrap, so the
sampler may read as slowly as it likes.  Events are system-wide (pid -1, a
CPU of ``cpumask``): they need ``perf_event_paranoid`` <= 0 or CAP_PERFMON.

A PMU can exist and still count nothing (seen on a GPU machine whose power
PMU has only ``energy-psys``, stuck at 0): the meter reads the total twice
and refuses a counter that does not move.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

from nrgloops import _checks
from nrgloops._errors import MeterUnavailable, NrgError
from nrgloops._ffi import PERMISSION, check, lib, new_handle
from nrgloops.meters._base import Meter, keep_domains
from nrgloops.meters._sysfs import StrPath, parse_cpulist, read_text

__all__ = ["EVENT_DOMAINS", "Pmu", "PmuEvent", "open_perf", "read_pmu"]

DEFAULT_ROOT = "/sys/bus/event_source/devices/power"
# event file -> domain kind, in the order domains are listed
EVENT_DOMAINS = {
    "energy-pkg": "package",
    "energy-cores": "core",
    "energy-gpu": "uncore",
    "energy-ram": "dram",
    "energy-psys": "psys",
}
_FORMAT = re.compile(r"^(config\d*):(.+)$")
MAX_TYPE = 2**32 - 1  # perf_event_attr.type is a __u32
MAX_CPU = 2**31 - 1
MAX_CONFIG_BIT = 63  # perf_event_attr.config is a __u64
# The kernel undoes the 32-bit wrap, but a counter reset on resume comes out
# as a huge step: as for the msr meter, more than 1 kW per event is a reset.
WRAP_BOUND_WATTS = 1000.0
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class PmuEvent:
    """One energy event of the power PMU."""

    name: str  # "energy-pkg"
    kind: str  # "package"
    config: int
    scale: float  # joules per count


@dataclass(frozen=True)
class Pmu:
    """What sysfs says about the power PMU."""

    path: str
    type: int
    cpus: tuple[int, ...]
    events: tuple[PmuEvent, ...]


def _format_bits(root: str, term: str) -> list[tuple[int, int]] | None:
    """Bit ranges of ``config`` a format term fills, lowest first (None if
    the term goes elsewhere, e.g. config1)."""
    path = os.path.join(root, "format", term)
    try:
        text = read_text(path)
    except OSError:
        return [(0, 63)] if term == "event" else None  # no format dir: event is config
    m = _FORMAT.match(text)
    if m is None or m.group(1) != "config":
        return None
    ranges = []
    for part in m.group(2).split(","):
        r = _RANGE.match(part.strip())
        if r is None:
            return None
        lo = int(r.group(1))
        hi = int(r.group(2) or lo)
        if not lo <= hi <= MAX_CONFIG_BIT:
            return None  # not a bit range of a 64-bit config
        ranges.append((lo, hi))
    return ranges


def _config(root: str, spec: str) -> int | None:
    """perf_event_attr.config for an event spec like "event=0x02,umask=0x1"."""
    config = 0
    for term in spec.split(","):
        term = term.strip()
        if not term:
            continue
        key, sep, value = term.partition("=")
        try:
            number = int(value, 0) if sep else 1
        except ValueError:
            return None
        bits = _format_bits(root, key.strip())
        if bits is None:
            return None
        for lo, hi in bits:  # spread the value's bits over the ranges, in order
            width = hi - lo + 1
            config |= (number & ((1 << width) - 1)) << lo
            number >>= width
        if number:
            return None  # more bits than the format gives it: not an event of this PMU
    return config


def read_pmu(root: StrPath = DEFAULT_ROOT) -> Pmu:
    """Parse the power PMU's sysfs directory.

    Raises:
        MeterUnavailable: the PMU is absent or describes no energy event.
    """
    root_s = _checks.path("root", root)
    if not os.path.isdir(root_s):
        raise MeterUnavailable(
            f"perf meter: {root_s} does not exist: the kernel has no RAPL power PMU here"
        )
    try:
        pmu_type = int(read_text(os.path.join(root_s, "type")))
        cpus = tuple(parse_cpulist(read_text(os.path.join(root_s, "cpumask"))))
    except (OSError, ValueError) as exc:
        raise MeterUnavailable(
            f"perf meter: cannot parse {root_s}/type or cpumask: {exc}"
        ) from None
    if not 0 <= pmu_type <= MAX_TYPE:
        raise MeterUnavailable(f"perf meter: {root_s}/type is {pmu_type}, not a perf type")
    if not cpus:
        raise MeterUnavailable(f"perf meter: {root_s}/cpumask names no CPU")
    if not all(0 <= c <= MAX_CPU for c in cpus):
        raise MeterUnavailable(f"perf meter: {root_s}/cpumask names CPUs out of range")
    events = []
    for name, kind in EVENT_DOMAINS.items():
        path = os.path.join(root_s, "events", name)
        try:
            spec = read_text(path)
        except OSError:
            continue
        config = _config(root_s, spec)
        if config is None or config >= 2**64:
            continue
        try:
            scale = float(read_text(path + ".scale"))
        except (OSError, ValueError):
            scale = 1.0  # no .scale file: counts are already in the unit
        try:
            unit = read_text(path + ".unit")
        except OSError:
            unit = "Joules"
        if unit != "Joules" or not (scale > 0 and math.isfinite(scale)):
            continue
        events.append(PmuEvent(name, kind, config, scale))
    if not events:
        raise MeterUnavailable(
            f"perf meter: {root_s}/events has no energy event "
            f"({', '.join(EVENT_DOMAINS)}) in Joules"
        )
    return Pmu(root_s, pmu_type, cpus, tuple(events))


def _paranoid(path: str = "/proc/sys/kernel/perf_event_paranoid") -> str:
    try:
        return read_text(path)
    except OSError:
        return "unknown"


def _open_event(source: object, pmu: Pmu, event: PmuEvent, cpu: int, index: int) -> None:
    where = (
        f"perf meter: perf_event_open(type={pmu.type}, config={event.config:#x}, cpu={cpu}) "
        f"for {pmu.path}/events/{event.name}"
    )
    permission = (
        f"; kernel.perf_event_paranoid is {_paranoid()} and system-wide events need <= 0 or "
        "CAP_PERFMON: run as root, `sysctl kernel.perf_event_paranoid=0`, or setcap "
        "cap_perfmon+ep on the python binary"
    )
    check(
        lib.nrg_counters_add_perf(source, pmu.type, event.config, cpu, event.scale, index),
        where,
        "the kernel refused the event",
        reasons={e: os.strerror(e) + permission for e in PERMISSION},
        unavailable=True,
    )


def open_perf(root: StrPath = DEFAULT_ROOT, settle: float = 0.03) -> Meter:
    """Open the power PMU's energy events on one CPU per package.

    Args:
        root: the PMU's sysfs directory.
        settle: seconds between the two reads that check the counters move
            (20-50 ms: RAPL updates about every 1 ms).

    Raises:
        MeterUnavailable: no PMU, no permission (the message gives the fix),
            a malformed PMU description, or a total that does not move.
    """
    settle = _checks.number("settle", settle, "seconds", lo=0.0, hi=1.0, lo_open=True)
    pmu = read_pmu(root)
    plan: list[tuple[str, PmuEvent, int]] = []
    for n, cpu in enumerate(pmu.cpus):
        for ev in pmu.events:
            if ev.kind != "psys":
                plan.append((f"{ev.kind}-{n}", ev, cpu))
    # psys covers the platform: one, on the first CPU, listed last
    plan += [("psys", ev, pmu.cpus[0]) for ev in pmu.events if ev.kind == "psys"]
    domains, dropped = keep_domains("perf", [name for name, _, _ in plan])
    plan = [p for p in plan if p[0] in domains]

    source = new_handle(
        lib.nrg_counters_new,
        len(domains),
        WRAP_BOUND_WATTS,
        what="perf meter: creating the counter source",
    )
    for i, (_, ev, cpu) in enumerate(plan):
        _open_event(source, pmu, ev, cpu, i)
    meter = Meter(
        source,
        kind="perf",
        measured=True,
        domains=domains,
        resolution_s=0.001,
        default_period=0.001,
        description=(
            f"measured: perf power PMU (type {pmu.type}) via {pmu.path}, "
            f"{len(plan)} events on CPUs {','.join(map(str, pmu.cpus))}"
        ),
        skipped=[f"{d}: more domains than nrgloops holds" for d in dropped],
    )
    _check_moves(meter, pmu.path, settle)
    return meter


def _check_moves(meter: Meter, path: str, settle: float) -> None:
    try:
        first = meter.read()
        time.sleep(settle)
        second = meter.read()
    except NrgError as exc:
        raise MeterUnavailable(f"perf meter: reading {path}: {exc}") from None
    before = sum(first.joules[d] for d in meter.total_domains)
    after = sum(second.joules[d] for d in meter.total_domains)
    if not after > before:
        raise MeterUnavailable(
            f"perf meter: the {'+'.join(meter.total_domains)} counter does not move "
            f"(read twice {settle * 1000:.0f} ms apart: {before:.6g} J, then {after:.6g} J); "
            f"not trusting {path}"
        )
