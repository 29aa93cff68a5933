"""The msr meter: RAPL energy counters read from ``/dev/cpu/<cpu>/msr``.

One CPU per package is read (the lowest-numbered one of each
``physical_package_id`` in sysfs), with ``pread`` at the register's address
on a file descriptor opened once; the C sampler does the reading, off the
GIL.  Counters are 32 bits wide and wrap: the C source undoes the wrap
exactly (modulo 2^32 units), as long as it reads more often than
``max_period``.

Intel (SDM vol. 3B 15.10; the kernel's intel_rapl_common.c / intel_rapl_msr.c):

=============  =======  ============================================
domain         address  unit
=============  =======  ============================================
units          0x606    energy = 1 / 2^bits[12:8] J
package-N      0x611    the 0x606 unit
core-N         0x639    the 0x606 unit (PP0)
uncore-N       0x641    the 0x606 unit (PP1, client iGPU)
dram-N         0x619    15.3 uJ fixed on HSW-EP, BDX, SKX, ICX, KNL/KNM
psys           0x64D    1 J fixed on Sapphire / Emerald Rapids; one,
                        read on the first package
=============  =======  ============================================

AMD Zen (family 17h/19h/1Ah, Hygon 18h): units 0xC0010299, package
0xC001029B per socket, core 0xC001029A per physical core (summed into
``core-N`` over one CPU of each core).

A domain is present when its register reads and is non-zero at open.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from nrgloops import _checks
from nrgloops._errors import MeterUnavailable
from nrgloops._ffi import check, lib, new_handle, raise_os_error
from nrgloops.meters._base import Meter, keep_domains
from nrgloops.meters._sysfs import (
    StrPath,
    Topology,
    cpu_info,
    cpu_topology,
    is_permission,
    split_packages,
)

__all__ = [
    "AMD_CORE_ENERGY",
    "AMD_PKG_ENERGY",
    "AMD_POWER_UNIT",
    "DRAM_FIXED_UNIT_MODELS",
    "INTEL_DRAM_ENERGY",
    "INTEL_PKG_ENERGY",
    "INTEL_PLATFORM_ENERGY",
    "INTEL_POWER_UNIT",
    "INTEL_PP0_ENERGY",
    "INTEL_PP1_ENERGY",
    "PSYS_FIXED_UNIT_MODELS",
    "open_msr",
]

log = logging.getLogger("nrgloops")

INTEL_POWER_UNIT = 0x606
INTEL_PKG_ENERGY = 0x611
INTEL_DRAM_ENERGY = 0x619
INTEL_PP0_ENERGY = 0x639
INTEL_PP1_ENERGY = 0x641
INTEL_PLATFORM_ENERGY = 0x64D
AMD_POWER_UNIT = 0xC0010299
AMD_CORE_ENERGY = 0xC001029A
AMD_PKG_ENERGY = 0xC001029B

# Family 6 models whose DRAM counter uses a fixed 15.3 uJ unit whatever 0x606
# says: the kernel's rapl_defaults_hsw_server list (HASWELL_X, BROADWELL_X,
# SKYLAKE_X, ICELAKE_X, ICELAKE_D, XEON_PHI_KNL, XEON_PHI_KNM).
DRAM_FIXED_UNIT_MODELS = frozenset({0x3F, 0x4F, 0x55, 0x6A, 0x6C, 0x57, 0x85})
DRAM_FIXED_UNIT_J = 15.3e-6
# rapl_defaults_spr_server (SAPPHIRERAPIDS_X, EMERALDRAPIDS_X): psys counts 1 J.
PSYS_FIXED_UNIT_MODELS = frozenset({0x8F, 0xCF})
PSYS_FIXED_UNIT_J = 1.0
# Silvermont-era Atoms (rapl_check_unit_atom): the energy unit is 2^ESU uJ.
_ATOM_UNIT_MODELS = frozenset({0x37, 0x4A, 0x4C, 0x5A})

COUNTER_MODULUS = 2**32
# max_period: half the time the fastest counter takes to wrap at this power.
# 1 kW per counter is conservative for any package or DRAM domain today.
WRAP_BOUND_WATTS = 1000.0

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}
_PERMISSION_FIX = (
    "run as root or grant cap_sys_rawio (setcap cap_sys_rawio+ep on the python binary) "
    "and read access to /dev/cpu/*/msr"
)
_MODPROBE_FIX = "load the msr driver: `modprobe msr` (as root)"
DEFAULT_ROOT = "/dev/cpu"
DEFAULT_SYSFS = "/sys/devices/system/cpu"
DEFAULT_CPUINFO = "/proc/cpuinfo"


@dataclass
class _Channel:
    domain: str
    path: str
    address: int
    unit_j: float


def _check_cpus(cpus: Sequence[int] | None) -> list[int] | None:
    if cpus is None:
        return None
    if isinstance(cpus, (str, bytes)) or not isinstance(cpus, Sequence):
        raise TypeError(f"cpus must be a sequence of CPU numbers, not {type(cpus).__name__}")
    out = [_checks.count("cpus", c, hi=2**31 - 1, what="CPU numbers (ints)") for c in cpus]
    if not out:
        raise ValueError("cpus must name at least one CPU (one per package)")
    if len(set(out)) != len(out):
        raise ValueError(f"cpus must not repeat a CPU, got {list(cpus)}")
    return out


def _msr_path(root: str, cpu: int) -> str:
    return os.path.join(root, str(cpu), "msr")


def _open_msr_file(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        root = os.path.dirname(os.path.dirname(path))
        driver = any(
            os.path.exists(os.path.join(root, d, "msr"))
            for d in (os.listdir(root) if os.path.isdir(root) else ())
        )
        absent = (
            "does not exist, though other CPUs' msr files do (a container that passes "
            "only some of /dev/cpu/*/msr?)"
            if driver
            else f"does not exist; {_MODPROBE_FIX}"
        )
        raise_os_error(
            exc,
            f"msr meter: {path}",
            reasons={
                errno.ENOENT: absent,
                errno.EACCES: f"{os.strerror(errno.EACCES)}; {_PERMISSION_FIX}",
                errno.EPERM: f"{os.strerror(errno.EPERM)}; {_PERMISSION_FIX}",
            },
        )


def _read_register(fd: int, path: str, address: int) -> int | None:
    """The 64-bit register at ``address``, or None if it cannot be read (EIO)."""
    try:
        data = os.pread(fd, 8, address)
    except OSError as exc:
        if is_permission(exc):
            raise_os_error(exc, f"msr meter: reading {path} at {address:#x}", _PERMISSION_FIX)
        return None  # EIO: the CPU has no such register
    if len(data) != 8:
        return None
    return int.from_bytes(data, "little")


class _MsrFiles:
    """The MSR files opened while probing, closed when done."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def read(self, cpu: int, address: int) -> int | None:
        path = _msr_path(self.root, cpu)
        fd = self.fds.get(cpu)
        if fd is None:
            fd = self.fds[cpu] = _open_msr_file(path)
        return _read_register(fd, path, address)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _vendor(vendor: str | None, cpuinfo: str | None) -> tuple[str, int, int]:
    """(vendor, family, model) with family/model -1 where /proc/cpuinfo is unreadable."""
    if cpuinfo is None:  # a root of the caller's, with no cpuinfo beside it
        if vendor is None:
            raise MeterUnavailable(
                "msr meter: with a root other than /dev/cpu the CPU vendor cannot be read "
                "from this machine's /proc/cpuinfo; pass vendor='intel' or vendor='amd' "
                "(or cpuinfo=)"
            )
        return vendor, -1, -1
    try:
        info = cpu_info(cpuinfo)
    except (OSError, ValueError) as exc:
        if vendor is None:
            raise MeterUnavailable(
                f"msr meter: cannot tell the CPU vendor from {os.fspath(cpuinfo)} ({exc}); "
                "pass vendor='intel' or vendor='amd'"
            ) from None
        return vendor, -1, -1
    if vendor is None:
        found = _VENDORS.get(info.vendor_id)
        if found is None:
            raise MeterUnavailable(
                f"msr meter: {info.vendor_id!r} CPUs ({os.fspath(cpuinfo)}) have no RAPL MSRs; "
                "only Intel and AMD do"
            )
        vendor = found
    elif _VENDORS.get(info.vendor_id) != vendor:
        return vendor, -1, -1  # cpuinfo describes another CPU: its model says nothing
    return vendor, info.family, info.model


def _energy_unit(raw_units: int, atom: bool) -> float:
    esu = (raw_units >> 8) & 0x1F
    if atom:
        return float(2**esu) * 1e-6
    return 2.0**-esu


def _plan_packages(
    cpus: list[int] | None, topology: dict[int, Topology], by_die: bool, sysfs: str | None
) -> list[tuple[str, int, list[Topology]]]:
    """(suffix, lead cpu, members) per package to read."""
    if cpus is not None:
        plan = []
        for n, cpu in enumerate(cpus):
            t = topology.get(cpu)
            members = [] if t is None else [m for m in topology.values() if m.package == t.package]
            members.sort(key=lambda m: m.cpu)
            plan.append((str(n), cpu, members))
        return plan
    if not topology:
        where = (
            f"under {sysfs}/cpu*/topology/physical_package_id"
            if sysfs is not None
            else "for a root other than /dev/cpu (pass sysfs= to read one)"
        )
        raise MeterUnavailable(
            f"msr meter: no CPU topology {where}; pass cpus=[one CPU per package]"
        )
    return split_packages(topology, by_die)


def _amd_cores(members: list[Topology]) -> list[int]:
    """One CPU (the lowest) per physical core of a package."""
    first: dict[tuple[int, int], int] = {}
    for t in sorted(members, key=lambda m: m.cpu):
        first.setdefault((t.die, t.core), t.cpu)
    return sorted(first.values())


def _domain_kind(name: str) -> str:
    return name.split("-", 1)[0]


def open_msr(
    root: StrPath = DEFAULT_ROOT,
    cpus: Sequence[int] | None = None,
    vendor: str | None = None,
    sysfs: StrPath | None = None,
    cpuinfo: StrPath | None = None,
    model: int | None = None,
) -> Meter:
    """Open the RAPL MSRs of every package.

    Everything the meter reads follows the roots it is given: with a
    ``root`` other than ``/dev/cpu`` it reads no topology or cpuinfo of this
    machine unless ``sysfs`` / ``cpuinfo`` say where.

    Args:
        root: where the per-CPU ``<cpu>/msr`` files are (``/dev/cpu``).
        cpus: one CPU per package to read, ``package-N`` being the N-th of
            them; default: the lowest CPU of each package found in sysfs.
        vendor: "intel" or "amd"; default: ``vendor_id`` of cpuinfo.
        sysfs: the CPU directory of sysfs, for the topology (default
            ``/sys/devices/system/cpu`` with the default root, else none).
        cpuinfo: /proc/cpuinfo, for the vendor and model (default
            ``/proc/cpuinfo`` with the default root, else none).
        model: the family 6 model number (for Intel's fixed-unit quirks);
            default: from cpuinfo.

    Raises:
        MeterUnavailable: no ``msr`` files (``modprobe msr``), no permission
            (root or cap_sys_rawio), or no RAPL register on this CPU.
    """
    root_s = _checks.path("root", root)
    own_machine = os.path.normpath(root_s) == DEFAULT_ROOT
    sysfs_s = _checks.path("sysfs", sysfs) if sysfs is not None else None
    cpuinfo_s = _checks.path("cpuinfo", cpuinfo) if cpuinfo is not None else None
    if own_machine:
        sysfs_s = sysfs_s or DEFAULT_SYSFS
        cpuinfo_s = cpuinfo_s or DEFAULT_CPUINFO
    if vendor is not None and vendor not in ("intel", "amd"):
        raise ValueError(f"vendor must be 'intel', 'amd' or None, got {vendor!r}")
    if model is not None:
        model = _checks.count("model", model, hi=2**31 - 1, what="a family 6 model number")
    cpu_list = _check_cpus(cpus)
    vendor, family, info_model = _vendor(vendor, cpuinfo_s)
    if model is None:
        model = info_model
    elif family == -1:
        family = 6
    intel_fam6 = vendor == "intel" and family == 6
    topology = cpu_topology(sysfs_s) if sysfs_s is not None else {}
    plan = _plan_packages(cpu_list, topology, vendor == "intel", sysfs_s)

    files = _MsrFiles(root_s)
    skipped: list[str] = []
    try:
        channels = _probe(files, plan, vendor, intel_fam6, model, skipped)
    finally:
        files.close()
    return _build(root_s, channels, vendor, skipped)


def _probe(
    files: _MsrFiles,
    plan: list[tuple[str, int, list[Topology]]],
    vendor: str,
    intel_fam6: bool,
    model: int,
    skipped: list[str],
) -> list[_Channel]:
    channels: list[_Channel] = []
    psys: _Channel | None = None
    unit_reg = INTEL_POWER_UNIT if vendor == "intel" else AMD_POWER_UNIT
    for i, (suffix, cpu, members) in enumerate(plan):
        path = _msr_path(files.root, cpu)
        raw_units = files.read(cpu, unit_reg)
        if not raw_units:
            raise MeterUnavailable(
                f"msr meter: {path}: RAPL_POWER_UNIT ({unit_reg:#x}) cannot be read or is 0: "
                f"this {vendor} CPU has no RAPL energy counters"
            )
        unit = _energy_unit(raw_units, intel_fam6 and model in _ATOM_UNIT_MODELS)

        def present(c: int, address: int) -> bool:
            value = files.read(c, address)
            return value is not None and (value & 0xFFFFFFFF) != 0

        if vendor == "intel":
            fixed_dram = intel_fam6 and model in DRAM_FIXED_UNIT_MODELS
            fixed_psys = intel_fam6 and model in PSYS_FIXED_UNIT_MODELS
            dram_unit = DRAM_FIXED_UNIT_J if fixed_dram else unit
            psys_unit = PSYS_FIXED_UNIT_J if fixed_psys else unit
            regs = [
                (f"package-{suffix}", INTEL_PKG_ENERGY, unit),
                (f"core-{suffix}", INTEL_PP0_ENERGY, unit),
                (f"uncore-{suffix}", INTEL_PP1_ENERGY, unit),
                (f"dram-{suffix}", INTEL_DRAM_ENERGY, dram_unit),
            ]
            for name, address, u in regs:
                if present(cpu, address):
                    channels.append(_Channel(name, path, address, u))
            # psys covers the platform: one, read on the first package, listed last
            if i == 0 and present(cpu, INTEL_PLATFORM_ENERGY):
                psys = _Channel("psys", path, INTEL_PLATFORM_ENERGY, psys_unit)
        else:
            if present(cpu, AMD_PKG_ENERGY):
                channels.append(_Channel(f"package-{suffix}", path, AMD_PKG_ENERGY, unit))
            cores = _amd_cores(members)
            # All of the package's cores, or none: a partial sum would be a lie.
            unreadable = []
            for c in cores:
                try:
                    files.read(c, AMD_CORE_ENERGY)
                except MeterUnavailable as exc:
                    unreadable.append(str(exc).removeprefix("msr meter: "))
            if unreadable:
                skipped.append(
                    f"core-{suffix}: {len(unreadable)} of its {len(cores)} cores cannot be "
                    f"read ({unreadable[0]})"
                )
            elif any(present(c, AMD_CORE_ENERGY) for c in cores):
                for c in cores:
                    channels.append(
                        _Channel(f"core-{suffix}", _msr_path(files.root, c), AMD_CORE_ENERGY, unit)
                    )
    if psys is not None:
        channels.append(psys)
    if not channels:
        raise MeterUnavailable(
            f"msr meter: every RAPL energy register under {files.root} reads 0 or fails: "
            "no energy counter here"
        )
    return channels


def _build(root: str, channels: list[_Channel], vendor: str, skipped: list[str]) -> Meter:
    domains, dropped = keep_domains("msr", list(dict.fromkeys(ch.domain for ch in channels)))
    skipped += [f"{d}: more domains than nrgloops holds" for d in dropped]
    channels = [ch for ch in channels if ch.domain in domains]
    source = new_handle(
        lib.nrg_counters_new,
        len(domains),
        WRAP_BOUND_WATTS,
        what="msr meter: creating the counter source",
    )
    for ch in channels:
        check(
            lib.nrg_counters_add_file(
                source,
                ch.path.encode(),
                lib.NRG_CH_MSR,
                ch.address,
                1,
                ch.unit_j,
                COUNTER_MODULUS,
                domains.index(ch.domain),
            ),
            f"msr meter: opening {ch.path} at {ch.address:#x}",
            _PERMISSION_FIX,
            reasons={errno.ENOSPC: f"more than {lib.NRG_MAX_CHANNELS} counters to read"},
        )
    if skipped:
        log.warning("nrgloops: msr meter: left out %s", "; ".join(skipped))
    min_unit = min(ch.unit_j for ch in channels)
    max_period = COUNTER_MODULUS * min_unit / (2 * WRAP_BOUND_WATTS)
    units = sorted({ch.unit_j for ch in channels})
    unit_text = ", ".join(f"{u * 1e6:.4g} uJ" for u in units)
    return Meter(
        source,
        kind="msr",
        measured=True,
        domains=domains,
        resolution_s=0.001,
        default_period=0.001,
        max_period=max_period,
        description=(
            f"measured: {vendor} RAPL MSRs via {root}/<cpu>/msr "
            f"({len(channels)} counters, energy unit {unit_text})"
        ),
        skipped=skipped,
    )
