"""Small readers of sysfs and /proc shared by the hardware meters.

Everything here takes the path it reads, so tests can point it at fake trees
laid out like the kernel's.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "CpuInfo",
    "StrPath",
    "Topology",
    "cpu_info",
    "cpu_topology",
    "is_permission",
    "parse_cpulist",
    "read_text",
    "split_packages",
]

StrPath: TypeAlias = "str | os.PathLike[str]"

_PERMISSION = (errno.EACCES, errno.EPERM)


def is_permission(exc: OSError) -> bool:
    """True for EACCES / EPERM, the errors that a fix in permissions cures."""
    return exc.errno in _PERMISSION


def read_text(path: StrPath) -> str:
    """The stripped text of a small file (sysfs attribute, /proc entry)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's CPU list format: "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return cpus


@dataclass(frozen=True)
class Topology:
    """Where one logical CPU sits: its physical package, die and core ids."""

    cpu: int
    package: int
    die: int
    core: int


_CPU_DIR = re.compile(r"^cpu(\d+)$")


def cpu_topology(sysfs: StrPath = "/sys/devices/system/cpu") -> dict[int, Topology]:
    """Topology of every CPU that has ``<sysfs>/cpuN/topology/physical_package_id``.

    Offline CPUs have no topology directory and are left out.  A missing
    ``die_id`` or ``core_id`` reads as 0 / the CPU number.
    """
    out: dict[int, Topology] = {}
    try:
        names = os.listdir(sysfs)
    except OSError:
        return out
    for name in names:
        m = _CPU_DIR.match(name)
        if not m:
            continue
        cpu = int(m.group(1))
        topo = os.path.join(sysfs, name, "topology")
        try:
            package = int(read_text(os.path.join(topo, "physical_package_id")))
        except (OSError, ValueError):
            continue
        die = _int_or(os.path.join(topo, "die_id"), 0)
        core = _int_or(os.path.join(topo, "core_id"), cpu)
        out[cpu] = Topology(cpu, package, die, core)
    return out


def _int_or(path: str, default: int) -> int:
    try:
        return int(read_text(path))
    except (OSError, ValueError):
        return default


def split_packages(
    topology: dict[int, Topology], by_die: bool
) -> list[tuple[str, int, list[Topology]]]:
    """Group CPUs by package (and die when ``by_die`` and a package has several).

    Returns ``(suffix, lead_cpu, members)`` in sorted package order, where
    suffix is "N" (N = the package's index in sorted order, not its raw id)
    or "N-die-M", and lead_cpu is the lowest-numbered CPU of the group.
    """
    packages = sorted({t.package for t in topology.values()})
    groups: list[tuple[str, int, list[Topology]]] = []
    for n, pkg in enumerate(packages):
        members = sorted((t for t in topology.values() if t.package == pkg), key=lambda t: t.cpu)
        dies = sorted({t.die for t in members})
        if by_die and len(dies) > 1:
            for m, die in enumerate(dies):
                part = [t for t in members if t.die == die]
                groups.append((f"{n}-die-{m}", part[0].cpu, part))
        else:
            groups.append((str(n), members[0].cpu, members))
    return groups


@dataclass(frozen=True)
class CpuInfo:
    """What the meters need from /proc/cpuinfo (its first processor)."""

    vendor_id: str  # "GenuineIntel", "AuthenticAMD", "HygonGenuine"
    family: int
    model: int
    model_name: str


def cpu_info(path: StrPath = "/proc/cpuinfo") -> CpuInfo:
    """Parse the first processor block of /proc/cpuinfo.

    Raises OSError if the file cannot be read and ValueError if it has no
    ``vendor_id`` line (non-x86 machines).
    """
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                if fields:
                    break  # end of the first processor's block
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    if "vendor_id" not in fields:
        raise ValueError(f"{os.fspath(path)} has no vendor_id line (not an x86 CPU?)")
    return CpuInfo(
        vendor_id=fields["vendor_id"],
        family=_int_field(fields.get("cpu family")),
        model=_int_field(fields.get("model")),
        model_name=fields.get("model name", ""),
    )


def _int_field(value: str | None) -> int:
    try:
        return int(value or "", 0)
    except ValueError:
        return -1
