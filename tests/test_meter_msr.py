"""The msr meter against fake /dev/cpu trees (Intel client/server/SPR, AMD)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nrgloops
from nrgloops import MeterUnavailable, Sampler, open_meter
from nrgloops._fakes import msr_tree as mt
from nrgloops._ffi import lib
from nrgloops.meters import msr as msr_mod
from nrgloops.meters.msr import open_msr

MOD32 = 2**32


@pytest.fixture
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _expected_delta(
    tree: mt.MsrTree,
    before: dict[tuple[int, int], int],
    channels: list[tuple[int, int]],
    unit: float,
) -> float:
    """Energy the meter should add: wrapped deltas of the bytes it reads."""
    return sum(((tree.counter(c, a) - before[(c, a)]) % MOD32) * unit for c, a in channels)


# -- Intel -----------------------------------------------------------------


def test_intel_client_domains_and_units(shm: Path) -> None:
    tree = mt.intel_client(shm)
    m = open_msr(**tree.options())
    assert m.kind == "msr" and m.measured and m.label == "measured"
    assert m.domains == ("package-0", "core-0", "uncore-0", "psys")  # no DRAM: reads 0
    assert m.total_domains == ("package-0",)  # package contains core and uncore; psys it
    r0 = m.read().joules
    assert all(v == 0.0 for v in r0.values())
    unit = 2.0**-14
    tree.advance(0, mt.INTEL_PKG, 16384)
    tree.advance(0, mt.INTEL_PP0, 8192)
    tree.advance(0, mt.INTEL_PP1, 3)
    tree.advance(0, mt.INTEL_PSYS, 3 * 16384)
    r1 = m.read().joules
    assert r1["package-0"] == pytest.approx(1.0, abs=1e-12)
    assert r1["core-0"] == pytest.approx(0.5, abs=1e-12)
    assert r1["uncore-0"] == pytest.approx(3 * unit, abs=1e-15)
    assert r1["psys"] == pytest.approx(3.0, abs=1e-12)
    assert m.max_period == pytest.approx(MOD32 * unit / 2000)
    assert "61.04 uJ" in m.description and "measured" in m.description


def test_reserved_high_bits_are_ignored(shm: Path) -> None:
    tree = mt.intel_client(shm)
    m = open_msr(**tree.options())
    # the fixture's package register has 0xABCD in its reserved high half
    tree.set(0, mt.INTEL_PKG, (0x1234 << 32) | ((tree.counter(0, mt.INTEL_PKG) + 10) & 0xFFFFFFFF))
    assert m.read().joules["package-0"] == pytest.approx(10 * 2.0**-14, abs=1e-15)


@pytest.mark.parametrize("esu", [0, 10, 14, 16, 31])
def test_energy_status_unit_decoding(shm: Path, esu: int) -> None:
    tree = mt.intel_client(shm, esu=esu)
    m = open_msr(**tree.options())
    units = min(1000, int(40 * 2.0**esu))  # at most 40 J: within the reset bound
    tree.advance(0, mt.INTEL_PKG, units)
    assert m.read().joules["package-0"] == pytest.approx(units * 2.0**-esu, rel=1e-12)


def test_atom_units_are_microjoule_powers(shm: Path) -> None:
    tree = mt.intel_client(shm, esu=5)
    m = open_msr(**tree.options(), model=0x37)  # Silvermont: 2^ESU uJ
    tree.advance(0, mt.INTEL_PKG, 10)
    assert m.read().joules["package-0"] == pytest.approx(10 * 32e-6, rel=1e-12)


@pytest.mark.parametrize("model", sorted(msr_mod.DRAM_FIXED_UNIT_MODELS))
def test_server_dram_uses_fixed_unit(shm: Path, model: int) -> None:
    tree = mt.intel_server(shm, model=model)
    m = open_msr(**tree.options())
    assert m.domains == ("package-0", "dram-0", "package-1", "dram-1")
    assert m.total_domains == ("package-0", "package-1")
    tree.advance(tree.lead_cpu(1), mt.INTEL_DRAM, 1_000_000)
    tree.advance(tree.lead_cpu(1), mt.INTEL_PKG, 16384)
    r = m.read().joules
    assert r["dram-1"] == pytest.approx(15.3, rel=1e-12)  # 1e6 x 15.3 uJ, not x 61 uJ
    assert r["package-1"] == pytest.approx(1.0, rel=1e-12)
    assert r["dram-0"] == 0.0
    assert m.max_period == pytest.approx(MOD32 * 15.3e-6 / 2000)


def test_client_model_dram_uses_0x606_unit(shm: Path) -> None:
    tree = mt.intel_server(shm)
    m = open_msr(**tree.options(), model=0x8C)  # the model argument overrides cpuinfo
    tree.advance(0, mt.INTEL_DRAM, 16384)
    assert m.read().joules["dram-0"] == pytest.approx(1.0, rel=1e-12)


def test_multi_socket_total_adds_packages_only(shm: Path) -> None:
    tree = mt.intel_server(shm, packages=2)
    m = open_msr(**tree.options())
    tree.advance(0, mt.INTEL_PKG, 16384 * 3)
    tree.advance(tree.lead_cpu(1), mt.INTEL_PKG, 16384 * 5)
    tree.advance(0, mt.INTEL_DRAM, 10**6)
    r = m.read().joules
    assert sum(r[d] for d in m.total_domains) == pytest.approx(8.0, rel=1e-12)
    with Sampler(m, period=0.001) as s:
        tree.advance(tree.lead_cpu(1), mt.INTEL_PKG, 16384 * 2)
        tree.advance(0, mt.INTEL_DRAM, 10**6)
        deadline = time.monotonic() + 2.0
        while s.energy() < 2.0 - 1e-9 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert s.energy() == pytest.approx(2.0, rel=1e-9)  # DRAM not in the total
        assert s.energy("dram-0") == pytest.approx(15.3, rel=1e-9)
        assert s.errors == 0


def test_spr_psys_one_joule_unit_and_single(shm: Path) -> None:
    tree = mt.intel_spr(shm, packages=2)
    m = open_msr(**tree.options())
    assert m.domains == ("package-0", "dram-0", "package-1", "dram-1", "psys")
    assert m.total_domains == ("package-0", "package-1")
    tree.advance(0, mt.INTEL_PSYS, 7)
    tree.advance(tree.lead_cpu(1), mt.INTEL_PSYS, 1000)  # not read: one psys only
    tree.advance(0, mt.INTEL_DRAM, 16384)
    r = m.read().joules
    assert r["psys"] == pytest.approx(7.0)
    assert r["dram-0"] == pytest.approx(1.0)  # SPR's DRAM uses the 0x606 unit


def test_cpus_option_and_open_meter_contract(shm: Path) -> None:
    tree = mt.intel_server(shm, packages=2)
    m = open_meter("msr", root=str(tree.root), cpus=[0], vendor="intel")
    assert m.domains == ("package-0", "dram-0")
    m2 = open_msr(root=tree.root, cpus=[tree.lead_cpu(1), 0], vendor="intel", cpuinfo=tree.cpuinfo)
    tree.advance(tree.lead_cpu(1), mt.INTEL_DRAM, 10)
    assert m2.read().joules["dram-0"] == pytest.approx(10 * 15.3e-6)  # package-N: N-th cpu


# -- AMD -------------------------------------------------------------------


def test_amd_package_and_summed_cores(shm: Path) -> None:
    tree = mt.amd_epyc(shm, packages=2, cores=4, threads=2)
    m = open_msr(**tree.options())
    assert m.domains == ("package-0", "core-0", "package-1", "core-1")
    assert m.total_domains == ("package-0", "package-1")
    unit = 2.0**-16
    chans = {f"core-{p}": [(c, mt.AMD_CORE) for c in tree.core_cpus(p)] for p in range(2)}
    chans["package-0"] = [(0, mt.AMD_PKG)]
    chans["package-1"] = [(tree.lead_cpu(1), mt.AMD_PKG)]
    before = {ca: tree.counter(*ca) for v in chans.values() for ca in v}
    # (the lead CPU's core counter overlaps the package's bytes in the fake:
    # it moves by the package's step << 8, so keep the steps small)
    tree.advance(0, mt.AMD_PKG, 256)
    tree.advance(tree.lead_cpu(1), mt.AMD_PKG, 3 * 256)
    for p in range(2):
        for c in tree.core_cpus(p)[1:]:
            tree.advance(c, mt.AMD_CORE, 1000 * (p + 1))
    r = m.read().joules
    assert r["package-0"] == pytest.approx(256 * unit, rel=1e-12)
    assert r["package-1"] == pytest.approx(768 * unit, rel=1e-12)
    assert m.resets == 0
    for d in ("core-0", "core-1"):
        assert r[d] == pytest.approx(_expected_delta(tree, before, chans[d], unit), rel=1e-12)
    # the cores that are not a lead CPU are intact: 3 cores x 1000 x (p+1) units
    lead_free = sum(
        ((tree.counter(c, mt.AMD_CORE) - before[(c, mt.AMD_CORE)]) % MOD32)
        for c in tree.core_cpus(1)[1:]
    )
    assert lead_free == 3 * 2000
    # SMT siblings are not read twice: 4 core channels per package
    assert "10 counters" in m.description


def test_amd_too_many_domains_keeps_packages(shm: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = mt.amd_epyc(shm, packages=33, cores=1, threads=1)  # 66 domains, 64 held
    with caplog.at_level(logging.WARNING, logger="nrgloops"):
        m = open_msr(**tree.options())
    assert len(m.domains) == lib.NRG_MAX_DOMAINS == 64
    assert all(f"package-{p}" in m.domains for p in range(33))
    assert m.total_domains == tuple(f"package-{p}" for p in range(33))
    assert "dropping core-31, core-32" in caplog.text
    assert [s.split(":")[0] for s in m.skipped] == ["core-31", "core-32"]


def test_more_packages_than_domains_is_refused(shm: Path) -> None:
    tree = mt.amd_epyc(shm, packages=65, cores=1, threads=1)
    with pytest.raises(MeterUnavailable, match="65 packages"):
        open_msr(**tree.options())


def test_fake_root_reads_nothing_of_this_machine(shm: Path) -> None:
    """With a root of its own and cpus=, the meter needs no topology or
    cpuinfo, and reads none of the real machine's (whose CPUs differ)."""
    tree = mt.amd_epyc(shm, packages=1, cores=2, threads=1)
    m = open_meter("msr", root=str(tree.root), cpus=[0], vendor="amd")
    assert m.domains == ("package-0",)  # cores unknown without a topology: none summed
    with pytest.raises(MeterUnavailable, match="vendor="):
        open_msr(root=tree.root, cpus=[0])  # this machine's cpuinfo is not read
    with pytest.raises(MeterUnavailable, match="sysfs="):
        open_msr(root=tree.root, vendor="amd")  # nor its topology
    # pathlib.Path wherever a path is taken
    assert open_msr(root=tree.root, sysfs=tree.sysfs, cpuinfo=tree.cpuinfo).domains == (
        "package-0",
        "core-0",
    )


def test_amd_missing_core_file_keeps_the_package(shm: Path) -> None:
    """A container that passes only /dev/cpu/0/msr: the package counter is
    read, the cores' sum is left out (a partial sum would be a lie), and the
    meter says which, without blaming the msr driver."""
    tree = mt.amd_epyc(shm, packages=1, cores=4, threads=1)
    for cpu in range(1, tree.ncpus):
        os.remove(tree.path(cpu))
    m = open_msr(**tree.options())
    assert m.domains == ("package-0",)
    assert len(m.skipped) == 1 and m.skipped[0].startswith("core-0: 3 of its 4 cores")
    assert "modprobe" not in m.skipped[0] and "container" in m.skipped[0]
    tree.advance(0, mt.AMD_PKG, 100)
    assert m.read().joules["package-0"] == pytest.approx(100 * 2.0**-16)


def test_cpuinfo_vendor_detection(shm: Path) -> None:
    tree = mt.amd_epyc(shm, packages=1)
    m = open_msr(**tree.options())
    assert "amd" in m.description
    tree.cpuinfo.write_text(tree.cpuinfo.read_text().replace("AuthenticAMD", "HygonGenuine"))
    assert open_msr(**tree.options()).domains == m.domains


# -- refusals ----------------------------------------------------------------


def test_missing_msr_driver_says_modprobe(shm: Path) -> None:
    tree = mt.intel_client(shm)
    for cpu in range(tree.ncpus):
        os.remove(tree.path(cpu))
    with pytest.raises(MeterUnavailable, match=r"modprobe msr") as e:
        open_msr(**tree.options())
    assert str(tree.path(0)) in str(e.value)


def test_missing_lead_file_does_not_blame_the_driver(shm: Path) -> None:
    tree = mt.intel_client(shm)
    os.remove(tree.path(0))  # other CPUs' files are there: the driver is loaded
    with pytest.raises(MeterUnavailable, match="container") as e:
        open_msr(**tree.options())
    assert "modprobe" not in str(e.value)


def test_missing_root(shm: Path) -> None:
    tree = mt.intel_client(shm)
    with pytest.raises(MeterUnavailable, match="modprobe msr"):
        open_msr(root=shm / "nowhere", sysfs=tree.sysfs, cpuinfo=tree.cpuinfo)


def test_no_rapl_units_register(shm: Path) -> None:
    tree = mt.intel_client(shm)
    tree.set(0, mt.INTEL_UNITS, 0)
    with pytest.raises(MeterUnavailable, match="no RAPL"):
        open_msr(**tree.options())


def test_all_counters_zero(shm: Path) -> None:
    tree = mt.intel_client(shm)
    for a in (mt.INTEL_PKG, mt.INTEL_PP0, mt.INTEL_PP1, mt.INTEL_PSYS):
        tree.set(0, a, 0)
    with pytest.raises(MeterUnavailable, match="reads 0"):
        open_msr(**tree.options())


def test_unknown_vendor_and_unreadable_cpuinfo(shm: Path) -> None:
    tree = mt.intel_client(shm)
    tree.cpuinfo.write_text(tree.cpuinfo.read_text().replace("GenuineIntel", "CentaurHauls"))
    with pytest.raises(MeterUnavailable, match="CentaurHauls"):
        open_msr(**tree.options())
    opts = tree.options() | {"cpuinfo": str(shm / "missing")}
    with pytest.raises(MeterUnavailable, match="vendor='intel'"):
        open_msr(**opts)
    assert open_msr(**opts, vendor="intel").domains[0] == "package-0"


def test_no_topology_asks_for_cpus(shm: Path) -> None:
    tree = mt.intel_client(shm)
    with pytest.raises(MeterUnavailable, match="cpus="):
        open_msr(root=tree.root, sysfs=shm / "empty", cpuinfo=tree.cpuinfo)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"vendor": "arm"}, ValueError, "vendor"),
        ({"cpus": []}, ValueError, "cpus"),
        ({"cpus": "0"}, TypeError, "cpus"),
        ({"cpus": [-1]}, ValueError, "cpus"),
        ({"cpus": [0, 0]}, ValueError, "cpus"),
        ({"cpus": [0.5]}, TypeError, "cpus"),
        ({"model": "85"}, TypeError, "model"),
        ({"model": 10**30}, ValueError, "model"),
        ({"cpus": [10**30]}, ValueError, "cpus"),
        ({"cpuinfo": 1}, TypeError, "cpuinfo"),  # open(1) would close stdout
        ({"cpuinfo": True}, TypeError, "cpuinfo"),
        ({"sysfs": 2}, TypeError, "sysfs"),
        ({"root": 0}, TypeError, "root"),
    ],
)
def test_bad_arguments(shm: Path, kwargs: dict[str, object], exc: type, pattern: str) -> None:
    tree = mt.intel_client(shm)
    with pytest.raises(exc, match=pattern):
        open_msr(**(tree.options() | kwargs))


def test_sampler_period_beyond_wrap_bound(shm: Path) -> None:
    m = open_msr(**mt.intel_client(shm).options())
    with pytest.raises(ValueError, match="period"):
        Sampler(m, period=m.max_period * 1.5)


def test_permission_denied_says_root_or_cap_sys_rawio() -> None:
    d = mt.shared_tmpdir()
    try:
        tree = mt.intel_client(d)
        for cpu in range(tree.ncpus):
            tree.path(cpu).chmod(0o600)  # as /dev/cpu/*/msr: root only
        out = mt.run_as_nobody(lambda: open_msr(**tree.options()))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out.startswith("MeterUnavailable:"), out
    assert "cap_sys_rawio" in out and "run as root" in out and "setcap" in out
    assert str(tree.path(0)) in out


# -- auto on this machine ------------------------------------------------------


_COUNTERS_HERE = (
    os.path.exists("/dev/cpu/0/msr")
    or os.path.isdir("/sys/class/powercap")
    or os.path.isdir("/sys/bus/event_source/devices/power")
)


@pytest.mark.skipif(_COUNTERS_HERE, reason="this machine has an energy counter")
def test_auto_falls_back_to_model_with_one_line_reason(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nrgloops.meters, "_fallback_logged", False)
    with caplog.at_level(logging.WARNING, logger="nrgloops"):
        m = open_meter("auto")
        open_meter("auto")  # the reason is logged once
    assert m.kind == "model" and not m.measured and m.label == "estimated"
    lines = [r.getMessage() for r in caplog.records if r.name == "nrgloops"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line and "ESTIMATED" in line and "nrgloops info" in line
    assert len(line) < 120  # one short line; the details are in fallback_reason
    why = m.fallback_reason or ""
    assert "msr:" in why and "modprobe msr" in why
    assert "powercap:" in why and "/sys/class/powercap" in why
    assert "perf:" in why and "/sys/bus/event_source/devices/power" in why
    assert " -- " not in m.description  # the reason is a field, not a suffix
