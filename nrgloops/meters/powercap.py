"""The powercap meter: RAPL energy counters read from ``/sys/class/powercap``.

Zones (Documentation/power/powercap/powercap.rst; drivers/powercap/
intel_rapl_common.c):

* ``intel-rapl:N``, named ``package-N`` or ``package-N-die-M`` -> the same name;
* ``intel-rapl:N:M`` under it, named ``core``, ``uncore`` or ``dram`` ->
  ``core-N``, ``uncore-N``, ``dram-N`` (``-die-M`` kept where the parent has it);
* a top-level zone named ``psys`` -> ``psys``.

The same zones exist under the other RAPL control types: ``intel-rapl-tpmi``
(Granite Rapids and later, where there are no RAPL MSRs) and
``intel-rapl-mmio`` (the processor thermal device of client parts, a second
view of the package counter).  They are read in that order of preference
after ``intel-rapl``, and a zone whose domain name is already taken is
skipped, so the MMIO copy of ``package-0`` is never counted twice.  AMD parts
show up as ``intel-rapl`` too; there the kernel's ``core`` zone counts the
first core of the package only (use the msr meter for all cores).

Each zone's ``energy_uj`` (microjoules) is read with ``pread`` on a file
descriptor opened once; it wraps one RAPL *unit* (not one microjoule) past
``max_energy_range_uj``: see :func:`wrap_modulus_uj`.  Since Linux 5.10
(CVE-2020-8694) ``energy_uj`` is readable by root only.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from nrgloops._errors import MeterUnavailable, NrgError
from nrgloops._ffi import check, ffi, lib
from nrgloops.meters._base import Meter
from nrgloops.meters._sysfs import StrPath, is_permission, read_text

__all__ = ["CONTROL_TYPES", "UDEV_RULE", "open_powercap", "wrap_modulus_uj"]

# In order of preference; a later type only adds domains the earlier lack.
CONTROL_TYPES = ("intel-rapl", "intel-rapl-tpmi", "intel-rapl-mmio")
UNIT_J = 1e-6
COUNTER_MAX = 2**32 - 1  # the kernel's ENERGY_STATUS_MASK: a 32-bit counter
WRAP_BOUND_WATTS = 1000.0  # as for the msr meter: conservative per zone

UDEV_RULE = (
    'SUBSYSTEM=="powercap", ACTION=="add", '
    'RUN+="/bin/chgrp power /sys%p/energy_uj", RUN+="/bin/chmod g+r /sys%p/energy_uj"'
)
PERMISSION_FIX = (
    "run as root, or give read access to energy_uj with a udev rule: put the line "
    f"`{UDEV_RULE}` "
    "in /etc/udev/rules.d/60-powercap.rules, add your user to a group 'power' "
    "(groupadd power), run `udevadm trigger --subsystem-match=powercap --action=add` "
    "(root-only since Linux 5.10 because of CVE-2020-8694: grant it to trusted users only)"
)

_ZONE = re.compile(r"^(?P<type>intel-rapl(?:-tpmi|-mmio)?)(?P<ids>(?::\d+)+)$")
_PACKAGE = re.compile(r"^package-(?P<n>\d+)(?P<die>-die-\d+)?$")
_SUBZONES = ("core", "uncore", "dram")


@dataclass
class _Zone:
    control_type: str
    ids: tuple[int, ...]
    path: str  # the zone directory (as found, symlinks not resolved)
    name: str  # the kernel's name file
    domain: str = ""


def wrap_modulus_uj(max_range_uj: int) -> int:
    """The modulus, in whole microjoules, at which ``energy_uj`` wraps.

    The kernel (intel_rapl_common.c) shows ``energy_uj = floor(raw * unit)``
    and ``max_energy_range_uj = floor((2**32 - 1) * unit)``, ``raw`` a 32-bit
    counter of RAPL units (``unit`` in uJ: 61.035 for 2^-14 J, truncated by
    the driver to whole nJ; 15.3 for server DRAM; 10^6 for the 1 J psys of
    Sapphire Rapids).  So the counter wraps at ``2**32 * unit`` uJ: one unit
    past the maximum, which ``max_range / (2**32 - 1)`` recovers to the
    nearest uJ (at least 1: below 0.5 uJ a unit rounds to 0).

    The C channel counts whole microjoules, so the modulus is an integer;
    with the kernel's floor on both files each wrap is off by less than
    1 uJ for the units real parts use (2^-14 J, 2^-16 J, 15.3 uJ, powers of
    two; at most 1.2 uJ for any 2^-ESU J), against about one unit (61 uJ)
    for ``max_range + 1``.
    """
    if max_range_uj <= 0:
        raise ValueError(f"max_range_uj must be > 0, got {max_range_uj}")
    return max_range_uj + max(1, round(max_range_uj / COUNTER_MAX))


def _zone_key(zone_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in zone_id.split(":")[1:])


def _find_zones(root: str) -> list[_Zone]:
    """Every RAPL zone under root: top-level entries (symlinks in
    /sys/class/powercap) and, for roots where subzones are only nested
    (``/sys/devices/virtual/powercap/intel-rapl``), their subdirectories."""
    seen: dict[str, _Zone] = {}

    def visit(directory: str, depth: int) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for entry in names:
            m = _ZONE.match(entry)
            if m is None:
                # a control-type directory holds its zones (intel-rapl/intel-rapl:0)
                if depth == 0 and entry in CONTROL_TYPES:
                    visit(os.path.join(directory, entry), depth + 1)
                continue
            path = os.path.join(directory, entry)
            if entry not in seen and os.path.isdir(path):
                try:
                    name = read_text(os.path.join(path, "name"))
                except OSError:
                    continue
                seen[entry] = _Zone(m.group("type"), _zone_key(entry), path, name)
                visit(path, depth + 1)

    visit(root, 0)
    return sorted(seen.values(), key=lambda z: (CONTROL_TYPES.index(z.control_type), z.ids))


def _name_domains(zones: list[_Zone]) -> list[_Zone]:
    """Give each zone its domain name; drop duplicates and unknown names."""
    by_key = {(z.control_type, z.ids): z for z in zones}
    taken: set[str] = set()
    out: list[_Zone] = []
    for z in zones:
        if len(z.ids) == 1:
            if _PACKAGE.match(z.name) or z.name == "psys":
                domain = z.name
            else:
                domain = re.sub(r"[^A-Za-z0-9_.-]", "_", z.name)
        else:
            parent = by_key.get((z.control_type, z.ids[:1]))
            pm = _PACKAGE.match(parent.name) if parent else None
            if pm is None or z.name not in _SUBZONES:
                continue  # a subzone of something that is not a package
            domain = f"{z.name}-{pm.group('n')}{pm.group('die') or ''}"
        if domain in taken:
            continue  # e.g. intel-rapl-mmio:0 repeats intel-rapl:0's package-0
        taken.add(domain)
        z.domain = domain
        out.append(z)

    # each package followed by its parts, psys (and anything else) last
    def key(z: _Zone) -> tuple[int, int, tuple[int, ...]]:
        is_part = _PACKAGE.match(z.name) is not None or len(z.ids) > 1
        return (0 if is_part else 1, CONTROL_TYPES.index(z.control_type), z.ids)

    return sorted(out, key=key)


def _read_zone(zone: _Zone) -> tuple[str, int, int]:
    """(energy_uj path, current value, modulus); raises MeterUnavailable."""
    energy = os.path.join(zone.path, "energy_uj")
    try:
        with open(energy, encoding="utf-8") as f:
            value = int(f.read().strip())
    except OSError as exc:
        if is_permission(exc):
            raise MeterUnavailable(
                f"powercap meter: {energy}: {os.strerror(exc.errno or errno.EACCES)}; "
                f"{PERMISSION_FIX}"
            ) from None
        raise MeterUnavailable(f"powercap meter: {energy}: {exc.strerror}") from None
    except ValueError:
        raise NrgError(f"powercap meter: {energy} does not hold a number") from None
    range_path = os.path.join(zone.path, "max_energy_range_uj")
    try:
        max_range = int(read_text(range_path))
    except OSError as exc:
        raise MeterUnavailable(f"powercap meter: {range_path}: {exc.strerror}") from None
    except ValueError:
        raise NrgError(f"powercap meter: {range_path} does not hold a number") from None
    if max_range <= 0:
        raise NrgError(f"powercap meter: {range_path} is {max_range}, expected > 0")
    return energy, value, wrap_modulus_uj(max_range)


def open_powercap(root: StrPath = "/sys/class/powercap") -> Meter:
    """Open every RAPL zone of the powercap tree.

    Args:
        root: ``/sys/class/powercap``, or a control type's directory.

    Raises:
        MeterUnavailable: no RAPL zone under ``root`` (no driver, a VM), or
            ``energy_uj`` not readable (root only since Linux 5.10; the
            message shows the udev rule that grants read access).
    """
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise MeterUnavailable(
            f"powercap meter: {root_s} does not exist: no powercap driver here "
            "(a VM, or load it with `modprobe intel_rapl_msr`)"
        )
    zones = _name_domains(_find_zones(root_s))
    if not zones:
        raise MeterUnavailable(
            f"powercap meter: no RAPL zone ({', '.join(t + ':*' for t in CONTROL_TYPES)}) "
            f"under {root_s}"
        )
    zones = zones[: int(lib.NRG_MAX_DOMAINS)]
    read = [(z, *_read_zone(z)) for z in zones]

    out = ffi.new("nrg_source **")
    check(lib.nrg_counters_new(out, len(zones)), "powercap meter: creating the counter source")
    source = ffi.gc(out[0], lib.nrg_source_free)
    for i, (_zone, energy, _value, modulus) in enumerate(read):
        check(
            lib.nrg_counters_add_file(
                source, energy.encode(), lib.NRG_CH_TEXT, 0, UNIT_J, modulus, i
            ),
            f"powercap meter: opening {energy}",
            PERMISSION_FIX,
        )
    min_range_j = min(modulus for *_, modulus in read) * UNIT_J
    types = sorted({z.control_type for z in zones}, key=CONTROL_TYPES.index)
    return Meter(
        source,
        kind="powercap",
        measured=True,
        domains=[z.domain for z in zones],
        resolution_s=0.001,
        default_period=0.001,
        max_period=min_range_j / (2 * WRAP_BOUND_WATTS),
        description=(
            f"measured: powercap {'/'.join(types)} zones under {root_s} "
            f"({len(zones)} counters, 1 uJ unit)"
        ),
    )
