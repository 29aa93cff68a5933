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

A package is counted once: a later control type's zone for a package that
an earlier one already has (``intel-rapl-mmio:0`` beside ``intel-rapl:0``
and ``intel-rapl:1`` named ``package-0-die-0`` / ``-die-1``) is skipped.

Each zone's ``energy_uj`` (microjoules) is read with ``pread`` on a file
descriptor opened once; it wraps at 2^32 RAPL *units*, one unit (not one
microjoule) past ``max_energy_range_uj``, and the unit in whole nanojoules
is recovered from that file (:func:`energy_unit_nj`), so every wrap is undone
exactly: see :func:`wrap_modulus_nj`.  Since Linux 5.10 (CVE-2020-8694)
``energy_uj`` is readable by root only, and each zone has its own
permissions: zones that cannot be read are left out and listed in the
meter's ``skipped``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from nrgloops import _checks
from nrgloops._errors import MeterUnavailable
from nrgloops._ffi import PERMISSION, check, lib, new_handle, raise_os_error
from nrgloops.meters._base import Meter, keep_domains
from nrgloops.meters._sysfs import StrPath, read_text

__all__ = ["CONTROL_TYPES", "UDEV_RULE", "energy_unit_nj", "open_powercap", "wrap_modulus_nj"]

log = logging.getLogger("nrgloops")

# In order of preference; a later type only adds domains the earlier lack.
CONTROL_TYPES = ("intel-rapl", "intel-rapl-tpmi", "intel-rapl-mmio")
COUNTER_MAX = 2**32 - 1  # the kernel's ENERGY_STATUS_MASK: a 32-bit counter
NJ_PER_UJ = 1000  # the C channel counts energy_uj x 1000: nanojoules
UNIT_J = 1e-9  # joules per count of the C channel
MAX_UNIT_NJ = 2**32 - 1  # 2^32 units of it must fit the C core's 64-bit counts
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


def energy_unit_nj(max_range_uj: int) -> int:
    """The zone's RAPL energy unit in whole nanojoules, from ``max_energy_range_uj``.

    The driver (intel_rapl_common.c) keeps the unit in whole nJ (2^-14 J is
    61035 nJ, server DRAM 15300 nJ, the 1 J psys of Sapphire Rapids 10^9)
    and shows ``max_energy_range_uj = floor((2**32 - 1) * unit_nj / 1000)``:
    consecutive units give values about 4.3 million apart, so the unit is the
    one integer that reproduces the file.  (A file that no integer
    reproduces, not the kernel's arithmetic, gets the nearest.)

    Raises:
        ValueError: a value no RAPL unit gives (<= 0, or a unit over 4 J).
    """
    if isinstance(max_range_uj, bool) or not isinstance(max_range_uj, int):
        raise TypeError(f"max_range_uj must be an int, not {type(max_range_uj).__name__}")
    guess = -(-max_range_uj * NJ_PER_UJ // COUNTER_MAX)  # ceil: the smallest that reaches it
    for unit in (guess, guess + 1, guess - 1):
        if 1 <= unit <= MAX_UNIT_NJ and COUNTER_MAX * unit // NJ_PER_UJ == max_range_uj:
            return unit
    unit = round(max_range_uj * NJ_PER_UJ / COUNTER_MAX)
    if not 1 <= unit <= MAX_UNIT_NJ:
        raise ValueError(
            f"max_energy_range_uj {max_range_uj} is no RAPL counter's range "
            f"(2^32 - 1 units of 1 nJ to 4.3 J)"
        )
    return unit


def wrap_modulus_nj(max_range_uj: int) -> int:
    """Where ``energy_uj`` wraps, exactly, in nanojoules: 2^32 units.

    ``energy_uj = floor(raw * unit_nj / 1000)``, so working in nJ
    (``energy_uj * 1000``) with this modulus makes each wrap exact: the
    floor's error does not add up over wraps, the total is within 1 uJ of
    the true energy however many wraps there were.
    """
    return (COUNTER_MAX + 1) * energy_unit_nj(max_range_uj)


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


def _name_domains(zones: list[_Zone]) -> tuple[list[_Zone], list[str]]:
    """Give each zone its domain name; drop duplicates and unknown names.

    Returns the zones kept and what was skipped.  A package is counted once:
    a later control type's zone for a package number that an earlier type
    already has is a second view of the same counter (MMIO beside MSR, also
    beside the per-die zones of a multi-die package), so it is dropped, with
    its subzones.
    """
    by_key = {(z.control_type, z.ids): z for z in zones}
    taken: set[str] = set()
    owner: dict[int, str] = {}  # package number -> the control type that has it
    out: list[_Zone] = []
    skipped: list[str] = []
    for z in zones:
        top = z if len(z.ids) == 1 else by_key.get((z.control_type, z.ids[:1]))
        pm = _PACKAGE.match(top.name) if top else None
        if pm is not None:
            n = int(pm.group("n"))
            if owner.setdefault(n, z.control_type) != z.control_type:
                if len(z.ids) == 1:
                    skipped.append(
                        f"{z.control_type}:{':'.join(map(str, z.ids))} ({z.name}): "
                        f"package {n} is already counted from {owner[n]}"
                    )
                continue
        if len(z.ids) == 1:
            if pm is not None or z.name == "psys":
                domain = z.name
            else:
                domain = re.sub(r"[^A-Za-z0-9_.-]", "_", z.name)
        else:
            if pm is None or z.name not in _SUBZONES:
                continue  # a subzone of something that is not a package
            domain = f"{z.name}-{pm.group('n')}{pm.group('die') or ''}"
        if domain in taken:
            continue  # e.g. a second psys zone
        taken.add(domain)
        z.domain = domain
        out.append(z)

    # each package followed by its parts, psys (and anything else) last
    def key(z: _Zone) -> tuple[int, int, tuple[int, ...]]:
        is_part = _PACKAGE.match(z.name) is not None or len(z.ids) > 1
        return (0 if is_part else 1, CONTROL_TYPES.index(z.control_type), z.ids)

    return sorted(out, key=key), skipped


def _read_zone(zone: _Zone) -> tuple[str, int]:
    """(energy_uj path, wrap modulus in nJ); raises MeterUnavailable."""
    energy = os.path.join(zone.path, "energy_uj")
    try:
        with open(energy, encoding="utf-8") as f:
            value = int(f.read().strip())
    except OSError as exc:
        raise_os_error(
            exc,
            f"powercap meter: {energy}",
            reasons={e: f"{os.strerror(e)}; {PERMISSION_FIX}" for e in PERMISSION},
        )
    except ValueError:
        raise MeterUnavailable(f"powercap meter: {energy} does not hold a number") from None
    range_path = os.path.join(zone.path, "max_energy_range_uj")
    try:
        modulus = wrap_modulus_nj(int(read_text(range_path)))
    except OSError as exc:
        raise_os_error(exc, f"powercap meter: {range_path}")
    except ValueError as exc:
        raise MeterUnavailable(f"powercap meter: {range_path}: malformed ({exc})") from None
    if not 0 <= value * NJ_PER_UJ < modulus:
        raise MeterUnavailable(
            f"powercap meter: {energy} is {value}, outside the counter's range 0.."
            f"{(modulus - 1) // NJ_PER_UJ} uJ (max_energy_range_uj)"
        )
    return energy, modulus


def _is_total_zone(zone: _Zone) -> bool:
    return _PACKAGE.match(zone.domain) is not None or zone.domain == "psys"


def open_powercap(root: StrPath = "/sys/class/powercap") -> Meter:
    """Open every readable RAPL zone of the powercap tree.

    Zones that cannot be read (each zone has its own permissions) are left
    out, logged and listed in the meter's ``skipped``.

    Args:
        root: ``/sys/class/powercap``, or a control type's directory.

    Raises:
        MeterUnavailable: no RAPL zone under ``root`` (no driver, a VM), no
            package or psys zone readable (root only since Linux 5.10; the
            message shows the udev rule that grants read access), or files
            that do not hold what the kernel writes there.
    """
    root_s = _checks.path("root", root)
    if not os.path.isdir(root_s):
        raise MeterUnavailable(
            f"powercap meter: {root_s} does not exist: no powercap driver here "
            "(a VM, or load it with `modprobe intel_rapl_msr`)"
        )
    zones, skipped = _name_domains(_find_zones(root_s))
    if not zones:
        raise MeterUnavailable(
            f"powercap meter: no RAPL zone ({', '.join(t + ':*' for t in CONTROL_TYPES)}) "
            f"under {root_s}"
        )
    readable: list[tuple[_Zone, str, int]] = []
    refusals: list[MeterUnavailable] = []
    for z in zones:
        try:
            readable.append((z, *_read_zone(z)))
        except MeterUnavailable as exc:
            refusals.append(exc)
            skipped.append(f"{z.domain}: {str(exc).removeprefix('powercap meter: ')}")
    if not any(_is_total_zone(z) for z, *_ in readable):
        if refusals:  # the first zone's reason names the file and the fix
            raise MeterUnavailable(
                f"{refusals[0]}"
                + (f" (and {len(refusals) - 1} more zones)" if len(refusals) > 1 else "")
            )
        raise MeterUnavailable(f"powercap meter: no package or psys zone under {root_s}")
    domains, dropped = keep_domains("powercap", [z.domain for z, *_ in readable])
    skipped += [f"{d}: more domains than nrgloops holds" for d in dropped]
    readable = [r for r in readable if r[0].domain in domains]

    source = new_handle(
        lib.nrg_counters_new,
        len(readable),
        WRAP_BOUND_WATTS,
        what="powercap meter: creating the counter source",
    )
    for i, (_zone, energy, modulus) in enumerate(readable):
        check(
            lib.nrg_counters_add_file(
                source, energy.encode(), lib.NRG_CH_TEXT, 0, NJ_PER_UJ, UNIT_J, modulus, i
            ),
            f"powercap meter: opening {energy}",
            PERMISSION_FIX,
            unavailable=True,
        )
    if skipped:
        log.warning("nrgloops: powercap meter: left out %s", "; ".join(skipped))
    min_range_j = min(modulus for *_, modulus in readable) * UNIT_J
    types = sorted({z.control_type for z, *_ in readable}, key=CONTROL_TYPES.index)
    return Meter(
        source,
        kind="powercap",
        measured=True,
        domains=domains,
        resolution_s=0.001,
        default_period=0.001,
        max_period=min_range_j / (2 * WRAP_BOUND_WATTS),
        description=(
            f"measured: powercap {'/'.join(types)} zones under {root_s} "
            f"({len(readable)} counters, 1 uJ shown, wraps exact to the unit)"
        ),
        skipped=skipped,
    )
