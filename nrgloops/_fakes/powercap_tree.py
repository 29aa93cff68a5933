"""A fake ``/sys/class/powercap`` laid out as the kernel lays it out.

Real layout (intel_rapl_common.c registers each zone with the powercap class):

    /sys/devices/virtual/powercap/intel-rapl/            control type: enabled
    /sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/           package
    /sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:0   core ...
    /sys/class/powercap/intel-rapl     -> ../../devices/virtual/powercap/intel-rapl
    /sys/class/powercap/intel-rapl:0   -> ../../devices/virtual/powercap/intel-rapl/intel-rapl:0
    /sys/class/powercap/intel-rapl:0:0 -> .../intel-rapl:0/intel-rapl:0:0

Zone files: ``name``, ``energy_uj`` (mode 0400 since Linux 5.10),
``max_energy_range_uj``, ``enabled``, and per constraint ``constraint_<i>_name``
(``long_term``, ``short_term``), ``_power_limit_uw``, ``_time_window_us``,
``_max_power_uw``.  ``energy_uj`` is rewritten in place (same inode), so a
file descriptor the meter holds sees each new value, as with sysfs.

The counters model the kernel, not the meter: each zone holds a raw 32-bit
counter of RAPL units and the driver's unit in whole nanojoules
(intel_rapl_common.c: ``energy_unit = ENERGY_UNIT_SCALE * 1000000 / (1 << ESU)``
in integers, so 2^-14 J is 61035 nJ, not 61035.15625; server DRAM 15300 nJ),
and ``rapl_unit_xlate`` writes ``energy_uj = floor(raw * unit_nj / 1000)`` and
``max_energy_range_uj = floor((2^32 - 1) * unit_nj / 1000)``.  Advancing adds
raw units modulo 2^32, so the wrap the meter sees is the kernel's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_RANGE_UJ",
    "CLIENT_UNIT_NJ",
    "DRAM_RANGE_UJ",
    "DRAM_UNIT_NJ",
    "MOD32",
    "PowercapTree",
    "client",
    "max_range_uj",
    "pyrapl_sensor",
    "server",
    "shown_uj",
]

MOD32 = 2**32  # the raw counter's modulus (ENERGY_STATUS_MASK + 1)
CLIENT_UNIT_NJ = 10**9 >> 14  # 61035: 2^-14 J as the driver truncates it
DRAM_UNIT_NJ = 15300  # the fixed 15.3 uJ DRAM unit of HSW-EP..ICX, KNL


def shown_uj(raw: int, unit_nj: int) -> int:
    """What the kernel shows in energy_uj for ``raw`` units."""
    return raw * unit_nj // 1000


def max_range_uj(unit_nj: int) -> int:
    """What the kernel shows in max_energy_range_uj."""
    return shown_uj(MOD32 - 1, unit_nj)


# (2^32 - 1) units of 61.035 uJ and of 15.3 uJ, as the kernel reports them.
CLIENT_RANGE_UJ = max_range_uj(CLIENT_UNIT_NJ)  # 262143328850
DRAM_RANGE_UJ = max_range_uj(DRAM_UNIT_NJ)  # 65712999613


@dataclass
class PowercapTree:
    """``root`` is the fake /sys/class/powercap; zones live under ``devices``.

    ``raw[zone]`` is the 32-bit counter, ``units_nj[zone]`` its unit;
    ``energy[zone]`` and ``ranges[zone]`` are what the files show (uJ)."""

    base: Path
    raw: dict[str, int] = field(default_factory=dict)
    units_nj: dict[str, int] = field(default_factory=dict)
    energy: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, int] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.root = self.base / "class" / "powercap"
        self.devices = self.base / "devices" / "virtual" / "powercap"
        self.root.mkdir(parents=True, exist_ok=True)
        self.devices.mkdir(parents=True, exist_ok=True)

    def _control_type(self, control_type: str) -> Path:
        d = self.devices / control_type
        if not d.exists():
            d.mkdir()
            (d / "enabled").write_text("1\n")
            os.symlink(os.path.relpath(d, self.root), self.root / control_type)
        return d

    def add_zone(
        self,
        zone: str,
        name: str,
        energy_uj: int = 0,
        unit_nj: int = CLIENT_UNIT_NJ,
        constraints: tuple[tuple[str, int, int, int], ...] = (),
    ) -> Path:
        """Add zone ``zone`` (e.g. "intel-rapl:0:1") named ``name``; its parent
        must exist.  The counter starts at the fewest raw units showing at
        least ``energy_uj``.  ``constraints``: (name, power_limit_uw,
        time_window_us, max_power_uw) for constraint_0, constraint_1, ..."""
        if unit_nj <= 0:
            raise ValueError(f"unit_nj must be > 0, got {unit_nj}")
        control_type, *ids = zone.split(":")
        parent = (
            self._control_type(control_type)
            if len(ids) == 1
            else self.paths[":".join([control_type, *ids[:-1]])]
        )
        d = parent / zone
        d.mkdir()
        (d / "name").write_text(name + "\n")
        (d / "enabled").write_text("1\n")
        (d / "max_energy_range_uj").write_text(f"{max_range_uj(unit_nj)}\n")
        for i, (cname, limit, window, max_power) in enumerate(constraints):
            (d / f"constraint_{i}_name").write_text(cname + "\n")
            (d / f"constraint_{i}_power_limit_uw").write_text(f"{limit}\n")
            (d / f"constraint_{i}_time_window_us").write_text(f"{window}\n")
            (d / f"constraint_{i}_max_power_uw").write_text(f"{max_power}\n")
        self.paths[zone] = d
        self.units_nj[zone] = unit_nj
        self.ranges[zone] = max_range_uj(unit_nj)
        self.set_energy(zone, energy_uj)
        os.chmod(d / "energy_uj", 0o400)  # root only, as since Linux 5.10
        os.symlink(os.path.relpath(d, self.root), self.root / zone)
        return d

    def set_raw(self, zone: str, raw: int) -> None:
        """Set the raw counter; energy_uj is rewritten in place (truncating,
        same inode), as sysfs shows it."""
        if not 0 <= raw < MOD32:
            raise ValueError(f"{zone}: raw {raw} outside 0..{MOD32 - 1}")
        value = shown_uj(raw, self.units_nj[zone])
        with open(self.paths[zone] / "energy_uj", "w") as f:
            f.write(f"{value}\n")
        self.raw[zone] = raw
        self.energy[zone] = value

    def set_energy(self, zone: str, value_uj: int) -> None:
        """Set the counter to the fewest raw units showing at least
        ``value_uj`` (shown: ``value_uj`` up to one unit more)."""
        if not 0 <= value_uj <= self.ranges[zone]:
            raise ValueError(f"{zone}: {value_uj} outside 0..{self.ranges[zone]}")
        unit = self.units_nj[zone]
        self.set_raw(zone, -(-value_uj * 1000 // unit))  # ceil

    def advance_raw(self, zone: str, units: int) -> float:
        """Add ``units`` RAPL units modulo 2^32, as the hardware counts;
        returns the energy added in uJ (``units * unit``, not floored)."""
        if units < 0:
            raise ValueError(f"{zone}: units must be >= 0, got {units}")
        self.set_raw(zone, (self.raw[zone] + units) % MOD32)
        return units * self.units_nj[zone] / 1000

    def advance(self, zone: str, delta_uj: float) -> float:
        """Add about ``delta_uj`` microjoules: the nearest whole number of
        units.  Returns the energy really added in uJ (within half a unit of
        ``delta_uj``); compare the meter with that."""
        return self.advance_raw(zone, round(delta_uj * 1000 / self.units_nj[zone]))


_PKG_CONSTRAINTS = (
    ("long_term", 28_000_000, 27_983_872, 28_000_000),
    ("short_term", 64_000_000, 2_440, 0),
)


def client(base: Path, mmio: bool = True) -> PowercapTree:
    """A laptop: package-0 with core and uncore subzones, a top-level psys zone,
    and (``mmio``) the intel-rapl-mmio copy of package-0."""
    t = PowercapTree(base)
    t.add_zone("intel-rapl:0", "package-0", 123_456_789, constraints=_PKG_CONSTRAINTS)
    t.add_zone("intel-rapl:0:0", "core", 45_678_901, constraints=(("long_term", 0, 976, 0),))
    t.add_zone("intel-rapl:0:1", "uncore", 1_234_567, constraints=(("long_term", 0, 976, 0),))
    t.add_zone("intel-rapl:1", "psys", 987_654_321, constraints=_PKG_CONSTRAINTS)
    if mmio:
        t.add_zone("intel-rapl-mmio:0", "package-0", 123_456_000, constraints=_PKG_CONSTRAINTS)
    return t


def server(base: Path, packages: int = 2, dram: bool = True) -> PowercapTree:
    """A multi-socket Xeon: package-N each with a dram subzone (15.3 uJ unit)."""
    t = PowercapTree(base)
    for p in range(packages):
        t.add_zone(
            f"intel-rapl:{p}", f"package-{p}", 10_000_000 * (p + 1), constraints=_PKG_CONSTRAINTS
        )
        if dram:
            t.add_zone(
                f"intel-rapl:{p}:0",
                "dram",
                1_000_000 * (p + 1),
                unit_nj=DRAM_UNIT_NJ,
                constraints=(("long_term", 0, 976, 0),),
            )
    return t


def pyrapl_sensor(tree: PowercapTree, packages: int = 1) -> Any:
    """A real pyRAPL ``Sensor`` reading this tree.

    pyRAPL hard-codes /sys/class/powercap and /sys/devices/system/cpu; while
    the sensor is built, its module's ``open`` and ``os.path.exists`` see
    those prefixes mapped into the fake tree (plus a CPU directory with one
    CPU per package).  The files it keeps open are the fake tree's, and its
    read path (seek(0) + readline() per counter) is pyRAPL's own, untouched.
    """
    import builtins
    from types import SimpleNamespace

    from nrgloops.meters.pyrapl import import_pyrapl

    import_pyrapl()
    import pyRAPL.device_api as api
    import pyRAPL.sensor

    cpu = tree.base / "pyrapl-cpu"
    cpu.mkdir(exist_ok=True)
    (cpu / "present").write_text(f"0-{packages - 1}\n" if packages > 1 else "0\n")
    for p in range(packages):
        topo = cpu / f"cpu{p}" / "topology"
        topo.mkdir(parents=True, exist_ok=True)
        (topo / "physical_package_id").write_text(f"{p}\n")
    mapping = (("/sys/class/powercap", str(tree.root)), ("/sys/devices/system/cpu", str(cpu)))

    def redirect(path: str) -> str:
        for prefix, target in mapping:
            if path.startswith(prefix):
                return target + path[len(prefix) :]
        return path

    real_open = builtins.open
    api.open = lambda path, *a, **k: real_open(redirect(path), *a, **k)
    api.os = SimpleNamespace(path=SimpleNamespace(exists=lambda p: os.path.exists(redirect(p))))
    try:
        return pyRAPL.sensor.Sensor()
    finally:
        del api.open
        api.os = os
