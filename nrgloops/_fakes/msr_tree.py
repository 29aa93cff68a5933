"""A fake ``/dev/cpu/<cpu>/msr`` tree, with the sysfs topology and /proc/cpuinfo
that go with it, in the kernel's formats.

The kernel's msr driver answers ``pread(fd, buf, 8, address)`` with the 64-bit
register at ``address``, little-endian.  The fake is a sparse plain file per
CPU with each register's 8 bytes written at its address, so the meter reads
it with the very same ``pread``.

Overlap: in a plain file, registers at consecutive addresses share bytes
(AMD's 0xC0010299 units, 0xC001029A core and 0xC001029B package counters sit
one byte apart).  Registers are therefore written in a fixed order
(``WRITE_ORDER``), so that what the meter reads survives:

* Intel: 0x606, 0x611, 0x619, 0x639, 0x641 and 0x64D are 8 or more bytes
  apart, so nothing overlaps; they are written in ascending order.
* AMD: on a package's lead CPU (the one the meter reads the units and the
  package counter from) the order is core, units, package.  The units' ESU
  byte (0xC001029A, bits 12:8) and the package counter's low 32 bits
  (0xC001029B..0xC001029E) stay intact; that CPU's core counter cannot, and
  reads as ``ESU byte | package bits 0..23 << 8``, exactly as the bytes lie.
  ``read()`` returns what the meter will see, so tests take expected core
  energies from it.  Other CPUs hold only their core counter, intact.

A real CPU answers every register on every CPU; the fake stores only those
the meter reads on that CPU.  Unwritten addresses read as zero (a sparse
hole), which the meter treats as an absent domain, as it does the kernel's EIO.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AMD_CORE",
    "AMD_PKG",
    "AMD_UNITS",
    "INTEL_DRAM",
    "INTEL_PKG",
    "INTEL_PP0",
    "INTEL_PP1",
    "INTEL_PSYS",
    "INTEL_UNITS",
    "MsrTree",
    "amd_epyc",
    "intel_client",
    "intel_server",
    "intel_spr",
    "run_as_nobody",
    "shared_tmpdir",
    "units_register",
]

INTEL_UNITS = 0x606
INTEL_PKG = 0x611
INTEL_DRAM = 0x619
INTEL_PP0 = 0x639
INTEL_PP1 = 0x641
INTEL_PSYS = 0x64D
AMD_UNITS = 0xC0010299
AMD_CORE = 0xC001029A
AMD_PKG = 0xC001029B

MASK32 = 0xFFFFFFFF
WRITE_ORDER = {
    "intel": (INTEL_UNITS, INTEL_PKG, INTEL_DRAM, INTEL_PP0, INTEL_PP1, INTEL_PSYS),
    "amd": (AMD_CORE, AMD_UNITS, AMD_PKG),
}
VENDOR_ID = {"intel": "GenuineIntel", "amd": "AuthenticAMD"}


def units_register(esu: int, power_unit: int = 3, time_unit: int = 10) -> int:
    """A RAPL_POWER_UNIT value: power 1/2^pu W (bits 3:0), energy 1/2^esu J
    (bits 12:8), time 1/2^tu s (bits 19:16)."""
    return (power_unit & 0xF) | ((esu & 0x1F) << 8) | ((time_unit & 0xF) << 16)


@dataclass
class MsrTree:
    """A fake machine: ``root`` (like /dev/cpu), ``sysfs`` (like
    /sys/devices/system/cpu) and ``cpuinfo`` (like /proc/cpuinfo).

    CPUs are numbered like Linux does: first threads of every core of every
    package, then the second threads.
    """

    base: Path
    vendor: str
    packages: int = 1
    cores: int = 2  # per package
    threads: int = 1  # per core
    family: int = 6
    model: int = 0x8C
    model_name: str = "Fake CPU"
    regs: dict[int, dict[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.root = self.base / "dev-cpu"
        self.sysfs = self.base / "sys-cpu"
        self.cpuinfo = self.base / "cpuinfo"
        self._write_topology()

    # -- layout ------------------------------------------------------------
    @property
    def ncpus(self) -> int:
        return self.packages * self.cores * self.threads

    def where(self, cpu: int) -> tuple[int, int, int]:
        """(package, core, thread) of a CPU."""
        thread, rest = divmod(cpu, self.packages * self.cores)
        package, core = divmod(rest, self.cores)
        return package, core, thread

    def lead_cpu(self, package: int) -> int:
        return package * self.cores

    def core_cpus(self, package: int) -> list[int]:
        """The first thread of each core of a package (the CPUs the meter reads)."""
        return [package * self.cores + c for c in range(self.cores)]

    def _write_topology(self) -> None:
        lines = []
        for cpu in range(self.ncpus):
            package, core, _ = self.where(cpu)
            topo = self.sysfs / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True, exist_ok=True)
            (topo / "physical_package_id").write_text(f"{package}\n")
            (topo / "die_id").write_text("0\n")
            (topo / "core_id").write_text(f"{core}\n")
            (self.root / str(cpu)).mkdir(parents=True, exist_ok=True)
            lines += [
                f"processor\t: {cpu}",
                f"vendor_id\t: {VENDOR_ID[self.vendor]}",
                f"cpu family\t: {self.family}",
                f"model\t\t: {self.model}",
                f"model name\t: {self.model_name}",
                "stepping\t: 1",
                f"physical id\t: {package}",
                f"siblings\t: {self.cores * self.threads}",
                f"core id\t\t: {core}",
                f"cpu cores\t: {self.cores}",
                "flags\t\t: fpu msr",
                "",
            ]
        # sysfs also has files that are not CPUs: the meter must skip them
        (self.sysfs / "online").write_text(f"0-{self.ncpus - 1}\n")
        (self.sysfs / "cpufreq").mkdir(exist_ok=True)
        self.cpuinfo.write_text("\n".join(lines) + "\n")

    def options(self) -> dict[str, Any]:
        """Keyword arguments pointing open_msr at this tree."""
        return {"root": str(self.root), "sysfs": str(self.sysfs), "cpuinfo": str(self.cpuinfo)}

    def path(self, cpu: int) -> Path:
        return self.root / str(cpu) / "msr"

    # -- registers ---------------------------------------------------------
    def set(self, cpu: int, address: int, value: int) -> None:
        """Set a register (64 bits) and rewrite the CPU's file in WRITE_ORDER."""
        self.regs.setdefault(cpu, {})[address] = value & 0xFFFFFFFFFFFFFFFF
        self._flush(cpu)

    def set_counter(self, cpu: int, address: int, value: int) -> None:
        """Set the low 32 bits (the energy count), keeping the reserved high bits."""
        old = self.regs.get(cpu, {}).get(address, 0)
        self.set(cpu, address, (old & ~MASK32) | (value & MASK32))

    def advance(self, cpu: int, address: int, units: int) -> None:
        """Add ``units`` to a 32-bit energy counter, wrapping at 2^32."""
        old = self.regs.get(cpu, {}).get(address, 0)
        self.set_counter(cpu, address, (old + units) & MASK32)

    def _flush(self, cpu: int) -> None:
        regs = self.regs.get(cpu, {})
        order = [a for a in WRITE_ORDER[self.vendor] if a in regs]
        order += sorted(a for a in regs if a not in order)
        with open(self.path(cpu), "r+b" if self.path(cpu).exists() else "w+b") as f:
            for address in order:
                os.pwrite(f.fileno(), regs[address].to_bytes(8, "little"), address)

    def read(self, cpu: int, address: int) -> int:
        """What ``pread(8)`` at ``address`` returns from the file (0 past the end)."""
        with open(self.path(cpu), "rb") as f:
            data = os.pread(f.fileno(), 8, address)
        return int.from_bytes(data.ljust(8, b"\0"), "little")

    def counter(self, cpu: int, address: int) -> int:
        """The low 32 bits the meter uses."""
        return self.read(cpu, address) & MASK32


def _fill(tree: MsrTree, cpu: int, values: dict[int, int]) -> None:
    tree.regs.setdefault(cpu, {}).update(values)
    tree._flush(cpu)


def intel_client(base: Path, esu: int = 14) -> MsrTree:
    """A one-package Intel laptop (Tiger Lake, family 6 model 0x8C): package,
    core, uncore and psys; no DRAM counter (reads 0)."""
    tree = MsrTree(
        base,
        "intel",
        packages=1,
        cores=4,
        threads=2,
        model=0x8C,
        model_name="11th Gen Intel(R) Core(TM) i7-1185G7 @ 3.00GHz",
    )
    for cpu in range(tree.ncpus):  # every CPU has the file; the meter reads the lead
        _fill(tree, cpu, {INTEL_UNITS: units_register(esu)} if cpu else {})
    _fill(
        tree,
        0,
        {
            INTEL_UNITS: units_register(esu),
            INTEL_PKG: 0xABCD_0000_1234_5678,  # high bits reserved: must be ignored
            INTEL_PP0: 0x0800_0000,
            INTEL_PP1: 0x0000_1000,
            INTEL_PSYS: 0x2000_0000,
        },
    )
    return tree


def intel_server(base: Path, packages: int = 2, model: int = 0x55, esu: int = 14) -> MsrTree:
    """A multi-socket Xeon (Skylake-SP by default, 0x55): package and DRAM per
    socket, DRAM in the fixed 15.3 uJ unit; PP0/PP1/psys read 0."""
    tree = MsrTree(
        base,
        "intel",
        packages=packages,
        cores=2,
        threads=2,
        model=model,
        model_name="Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
    )
    for cpu in range(tree.ncpus):
        _fill(tree, cpu, {INTEL_UNITS: units_register(esu)})
    for p in range(packages):
        _fill(
            tree,
            tree.lead_cpu(p),
            {
                INTEL_PKG: 0x1000_0000 * (p + 1) + 17,
                INTEL_DRAM: 0x0100_0000 * (p + 1) + 5,
            },
        )
    return tree


def intel_spr(base: Path, packages: int = 2) -> MsrTree:
    """A Sapphire Rapids server (0x8F): package and DRAM per socket (0x606
    unit) and one psys counter in the fixed 1 J unit."""
    tree = MsrTree(
        base,
        "intel",
        packages=packages,
        cores=2,
        threads=1,
        model=0x8F,
        model_name="Intel(R) Xeon(R) Platinum 8480+",
    )
    for cpu in range(tree.ncpus):
        _fill(tree, cpu, {INTEL_UNITS: units_register(14)})
    for p in range(packages):
        _fill(
            tree,
            tree.lead_cpu(p),
            {
                INTEL_PKG: 0x2000_0000 + p,
                INTEL_DRAM: 0x0300_0000 + p,
                INTEL_PSYS: 1000 + p,  # the second package's psys is not read
            },
        )
    return tree


def amd_epyc(
    base: Path, packages: int = 2, cores: int = 4, threads: int = 2, esu: int = 16
) -> MsrTree:
    """A multi-socket AMD EPYC (Zen 3, family 0x19): package counter per
    socket, core counter per physical core, 15.26 uJ unit (ESU 16)."""
    tree = MsrTree(
        base,
        "amd",
        packages=packages,
        cores=cores,
        threads=threads,
        family=0x19,
        model=0x01,
        model_name="AMD EPYC 7763 64-Core Processor",
    )
    for p in range(packages):
        for i, cpu in enumerate(tree.core_cpus(p)):
            _fill(tree, cpu, {AMD_CORE: 0x0010_0000 * (i + 1) + p})
        _fill(
            tree,
            tree.lead_cpu(p),
            {
                AMD_UNITS: units_register(esu),
                AMD_PKG: 0x0400_0000 * (p + 1) + 3,
            },
        )
    for cpu in range(tree.ncpus):  # second threads: the file exists, nothing read there
        if not tree.path(cpu).exists():
            _fill(tree, cpu, {})
    return tree


def shared_tmpdir() -> Path:
    """A fresh directory under /dev/shm (tmpfs) that every user may traverse,
    for trees read by ``run_as_nobody``; the caller removes it."""
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = Path(tempfile.mkdtemp(prefix="nrgloops-test-", dir=base))
    d.chmod(0o755)
    return d


def run_as_nobody(fn: Callable[[], object]) -> str:
    """Run ``fn`` in a forked child that has dropped root for nobody (65534)
    and return ``"<ExceptionType>: <message>"`` of what it raised, or
    ``"ok"``.  This is how a test that runs as root sees the permission
    errors a user gets: a file mode or a kernel check, not a mock."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the test runner
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                out = "ok"
            except BaseException as exc:  # reported to the parent
                out = f"{type(exc).__name__}: {exc}"
            os.write(w, out.encode()[:60000])
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("the child that dropped root failed before running the test")
    return b"".join(chunks).decode()
