"""The powercap meter against fake /sys/class/powercap trees."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nrgloops import MeterUnavailable, NrgError, Sampler, open_meter
from nrgloops._fakes import msr_tree as mt
from nrgloops._fakes import powercap_tree as pt
from nrgloops.meters.powercap import open_powercap, wrap_modulus_nj


@pytest.fixture
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_client_zones_and_symlinks(shm: Path) -> None:
    tree = pt.client(shm, mmio=True)
    assert (tree.root / "intel-rapl:0:1").is_symlink()  # as in /sys/class/powercap
    m = open_powercap(tree.root)
    assert m.kind == "powercap" and m.measured
    # the intel-rapl-mmio copy of package-0 is not counted twice
    assert m.domains == ("package-0", "core-0", "uncore-0", "psys")
    assert m.total_domains == ("package-0",)
    want = {
        "package-0": tree.advance("intel-rapl:0", 2_500_000),
        "core-0": tree.advance_raw("intel-rapl:0:0", 1),  # one 61.035 uJ unit
        "uncore-0": tree.advance("intel-rapl:0:1", 750_000),
        "psys": tree.advance("intel-rapl:1", 4_000_000),
    }
    tree.advance("intel-rapl-mmio:0", 9_000_000)  # ignored
    r = m.read().joules
    # energy_uj is floored to whole uJ: each reading within 1 uJ
    assert r == pytest.approx({d: uj * 1e-6 for d, uj in want.items()}, abs=1e-6)
    assert r["package-0"] == pytest.approx(2.5, abs=61e-6)  # the nearest whole unit
    assert m.max_period == pytest.approx(wrap_modulus_nj(pt.CLIENT_RANGE_UJ) * 1e-9 / 2000)


def test_server_two_sockets_with_dram(shm: Path) -> None:
    tree = pt.server(shm, packages=2)
    m = open_meter("powercap", root=str(tree.root))
    assert m.domains == ("package-0", "dram-0", "package-1", "dram-1")
    assert m.total_domains == ("package-0", "package-1")
    pkg_uj = tree.advance("intel-rapl:0", 1_000_000) + tree.advance("intel-rapl:1", 2_000_000)
    dram_uj = tree.advance("intel-rapl:1:0", 3_000_000)  # 15.3 uJ units
    r = m.read().joules
    assert sum(r[d] for d in m.total_domains) == pytest.approx(pkg_uj * 1e-6, abs=2e-6)
    assert r["dram-1"] == pytest.approx(dram_uj * 1e-6, abs=1e-6)
    assert m.max_period == pytest.approx(wrap_modulus_nj(pt.DRAM_RANGE_UJ) * 1e-9 / 2000)


def test_root_may_be_a_control_type_directory(shm: Path) -> None:
    tree = pt.server(shm, packages=2)
    nested = open_powercap(tree.devices / "intel-rapl")  # subzones only nested here
    assert nested.domains == ("package-0", "dram-0", "package-1", "dram-1")
    via_class = open_powercap(tree.devices)  # control types as subdirectories
    assert via_class.domains == nested.domains


def test_mmio_and_tpmi_alone(shm: Path) -> None:
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl-mmio:0", "package-0", 5)
    assert open_powercap(tree.root).domains == ("package-0",)
    tree.add_zone("intel-rapl-tpmi:0", "package-0", 7)  # preferred over mmio
    tree.add_zone("intel-rapl-tpmi:1", "package-1", 7)
    tree.add_zone("intel-rapl-tpmi:0:0", "dram", 7)
    m = open_powercap(tree.root)
    assert m.domains == ("package-0", "dram-0", "package-1")
    assert "intel-rapl-tpmi" in m.description
    uj = tree.advance_raw("intel-rapl-tpmi:0", 10)
    tree.advance_raw("intel-rapl-mmio:0", 1000)
    assert m.read().joules["package-0"] == pytest.approx(uj * 1e-6, abs=1e-6)


def test_die_zones(shm: Path) -> None:
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl:0", "package-0-die-0", 1)
    tree.add_zone("intel-rapl:0:0", "dram", 1)
    tree.add_zone("intel-rapl:1", "package-0-die-1", 1)
    tree.add_zone("intel-rapl:1:0", "dram", 1)
    m = open_powercap(tree.root)
    assert m.domains == ("package-0-die-0", "dram-0-die-0", "package-0-die-1", "dram-0-die-1")
    assert m.total_domains == ("package-0-die-0", "package-0-die-1")  # dies do not overlap


def test_psys_only(shm: Path) -> None:
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl:0", "psys", 1)
    m = open_powercap(tree.root)
    assert m.domains == ("psys",) and m.total_domains == ("psys",)


def test_modulus_is_one_unit_past_max_range(shm: Path) -> None:
    """The counter wraps 2^32 raw units after 0: one unit (15.3 uJ on server
    DRAM) past max_energy_range_uj, not one microjoule."""
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl:0", "package-0", unit_nj=pt.DRAM_UNIT_NJ)
    tree.set_raw("intel-rapl:0", pt.MOD32 - 3)
    m = open_powercap(tree.root)
    true_uj = tree.advance_raw("intel-rapl:0", 2)  # to the largest value shown
    assert tree.energy["intel-rapl:0"] == pt.DRAM_RANGE_UJ
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=1e-6)
    true_uj += tree.advance_raw("intel-rapl:0", 1)  # wrapped: energy_uj 0
    assert tree.energy["intel-rapl:0"] == 0
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=1e-6)
    true_uj += tree.advance_raw("intel-rapl:0", 65)
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=1e-6)
    assert true_uj == pytest.approx(68 * 15.3)


def test_sampler_reads_powercap(shm: Path) -> None:
    tree = pt.client(shm)
    m = open_powercap(tree.root)
    with Sampler(m, period=0.001) as s:
        want = tree.advance("intel-rapl:0", 3_000_000) * 1e-6
        deadline = time.monotonic() + 2.0
        while s.energy() < want - 1e-6 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert s.energy() == pytest.approx(want, abs=1e-6)
        assert s.energy("psys") == 0.0
        assert s.errors == 0


def test_missing_root_names_the_path(shm: Path) -> None:
    with pytest.raises(MeterUnavailable, match="does not exist") as e:
        open_powercap(shm / "nope")
    assert str(shm / "nope") in str(e.value)


def test_no_zones(shm: Path) -> None:
    (shm / "powercap" / "dtpm").mkdir(parents=True)
    with pytest.raises(MeterUnavailable, match="no RAPL zone") as e:
        open_powercap(shm / "powercap")
    assert str(shm / "powercap") in str(e.value)


def test_energy_uj_root_only_gives_udev_fix() -> None:
    d = mt.shared_tmpdir()
    try:
        tree = pt.client(d)  # energy_uj is mode 0400, as since Linux 5.10
        out = mt.run_as_nobody(lambda: open_powercap(tree.root))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out.startswith("MeterUnavailable:"), out
    assert "run as root, or give read access to energy_uj with a udev rule" in out
    assert 'SUBSYSTEM=="powercap"' in out and "chmod g+r /sys%p/energy_uj" in out
    assert "energy_uj" in out and str(tree.root) in out
    assert "\n" not in out  # fits auto's one-line reason


def test_readable_energy_uj_opens_as_user() -> None:
    d = mt.shared_tmpdir()
    try:
        tree = pt.client(d)
        for zone in tree.paths.values():
            os.chmod(zone / "energy_uj", 0o444)  # what the udev rule grants
        out = mt.run_as_nobody(lambda: open_powercap(tree.root))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out == "ok"


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("max_energy_range_uj", "lots"),
        ("max_energy_range_uj", str(10**30)),  # was an OverflowError in the C call
        ("max_energy_range_uj", "0"),
        ("max_energy_range_uj", "-5"),
        ("energy_uj", "many"),
        ("energy_uj", str(2**70)),
        ("energy_uj", str(pt.CLIENT_RANGE_UJ + 100)),  # past the counter's range
    ],
)
def test_malformed_files_make_the_meter_unavailable(shm: Path, file: str, text: str) -> None:
    """sysfs values the kernel never writes: MeterUnavailable (auto then
    falls back), naming the file, never another exception."""
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl:0", "package-0", 1)
    (tree.paths["intel-rapl:0"] / file).write_text(text + "\n")
    with pytest.raises(MeterUnavailable, match=file):
        open_powercap(tree.root)


def test_auto_falls_back_on_any_nrgloops_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import nrgloops.meters as meters

    def broken(**_: object) -> None:
        raise NrgError("reads nonsense")

    real = meters._opener
    monkeypatch.setattr(
        meters, "_opener", lambda kind: broken if kind in meters._AUTO_ORDER else real(kind)
    )
    m = open_meter("auto")
    assert m.kind == "model" and "msr: reads nonsense" in (m.fallback_reason or "")


def test_subzones_root_only_use_the_readable_package() -> None:
    """The common `chmod a+r intel-rapl:0/energy_uj`: the package is read,
    the root-only subzones and psys are listed as skipped."""
    d = mt.shared_tmpdir()
    try:
        tree = pt.client(d, mmio=False)
        os.chmod(tree.paths["intel-rapl:0"] / "energy_uj", 0o444)

        def check() -> None:
            m = open_powercap(tree.root)
            assert m.domains == ("package-0",), m.domains
            assert [s.split(":")[0] for s in m.skipped] == ["core-0", "uncore-0", "psys"]
            assert all("Permission denied" in s for s in m.skipped)

        out = mt.run_as_nobody(check)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out == "ok", out


def test_many_zones_keep_every_package(shm: Path) -> None:
    """Twenty packages with DRAM (40 zones): none cut, the total has every
    package (the old limit of 16 dropped packages silently)."""
    tree = pt.server(shm, packages=20)
    m = open_powercap(tree.root)
    assert len(m.domains) == 40 and not m.skipped
    assert m.total_domains == tuple(f"package-{p}" for p in range(20))
    want = sum(tree.advance(f"intel-rapl:{p}", 1000 * (p + 1)) for p in range(20))
    r = m.read().joules
    assert sum(r[d] for d in m.total_domains) == pytest.approx(want * 1e-6, abs=20e-6)


def test_mmio_beside_multi_die_package_is_not_counted_twice(shm: Path) -> None:
    tree = pt.PowercapTree(shm)
    tree.add_zone("intel-rapl:0", "package-0-die-0", 1)
    tree.add_zone("intel-rapl:1", "package-0-die-1", 1)
    tree.add_zone("intel-rapl-mmio:0", "package-0", 1)  # the same package, once more
    m = open_powercap(tree.root)
    assert m.domains == ("package-0-die-0", "package-0-die-1")
    assert m.total_domains == m.domains
    assert len(m.skipped) == 1 and "intel-rapl-mmio:0" in m.skipped[0]


def test_paths_are_checked(shm: Path) -> None:
    with pytest.raises(TypeError, match="root"):
        open_powercap(3)  # type: ignore[arg-type]
    tree = pt.server(shm, packages=1)
    assert open_powercap(tree.root).domains == ("package-0", "dram-0")  # a pathlib.Path
