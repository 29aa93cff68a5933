"""The perf meter: sysfs parsing on a fake PMU tree, and the real
perf_event_open path.

The power PMU cannot be faked (the syscall is the kernel's), so two things
are tested for real: here, where there is no power PMU, open_perf() refuses
with the path; and the plumbing (open, read, the "does it move" check,
permission errors) through the kernel's *software* PMU (type 1), described
by a fake sysfs directory: cpu-clock stands in for a moving energy counter
and the dummy event for one stuck at 0.  Those counts are not energy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nrgloops import MeterUnavailable
from nrgloops._fakes import msr_tree as mt
from nrgloops._ffi import ffi, lib
from nrgloops.meters.perf import DEFAULT_ROOT, open_perf, read_pmu

SCALE = "2.3283064365386962890625e-10"
PERF_TYPE_SOFTWARE = 1
SW_CPU_CLOCK = 0
SW_DUMMY = 9


@pytest.fixture
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fake_pmu(
    base: Path,
    pmu_type: int = 23,
    cpumask: str = "0,28",
    events: dict[str, str] | None = None,
    scale: str = SCALE,
    fmt: str | None = "config:0-7",
) -> Path:
    """A power PMU directory as arch/x86/events/rapl.c exposes it."""
    root = base / "power"
    (root / "events").mkdir(parents=True)
    (root / "type").write_text(f"{pmu_type}\n")
    (root / "cpumask").write_text(f"{cpumask}\n")
    if fmt is not None:
        (root / "format").mkdir()
        (root / "format" / "event").write_text(f"{fmt}\n")
    if events is None:
        events = {
            "energy-cores": "event=0x01",
            "energy-pkg": "event=0x02",
            "energy-ram": "event=0x03",
            "energy-psys": "event=0x05",
        }
    for name, spec in events.items():
        (root / "events" / name).write_text(spec + "\n")
        (root / "events" / f"{name}.scale").write_text(scale + "\n")
        (root / "events" / f"{name}.unit").write_text("Joules\n")
    return root


def _perf_works() -> bool:
    out = ffi.new("nrg_source **")
    if lib.nrg_counters_new(out, 1, 0.0) < 0:
        return False
    src = ffi.gc(out[0], lib.nrg_source_free)
    return bool(lib.nrg_counters_add_perf(src, PERF_TYPE_SOFTWARE, SW_CPU_CLOCK, 0, 1e-9, 0) == 0)


needs_perf = pytest.mark.skipif(not _perf_works(), reason="perf_event_open is not allowed here")


def test_parse_power_pmu(shm: Path) -> None:
    pmu = read_pmu(fake_pmu(shm))
    assert pmu.type == 23 and pmu.cpus == (0, 28)
    got = {(e.name, e.kind, e.config) for e in pmu.events}
    assert got == {
        ("energy-cores", "core", 1),
        ("energy-pkg", "package", 2),
        ("energy-ram", "dram", 3),
        ("energy-psys", "psys", 5),
    }
    assert all(e.scale == 2.0**-32 for e in pmu.events)


def test_parse_cpumask_ranges_and_format_bits(shm: Path) -> None:
    root = fake_pmu(
        shm, cpumask="0-1,4", events={"energy-pkg": "event=0x1ff"}, fmt="config:0-7,32-35"
    )
    pmu = read_pmu(root)
    assert pmu.cpus == (0, 1, 4)
    assert pmu.events[0].config == 0xFF | (0x1 << 32)  # the value spread over the ranges


def test_parse_without_format_scale_or_with_other_units(shm: Path) -> None:
    root = fake_pmu(shm, events={"energy-pkg": "event=0x02", "energy-ram": "event=0x03"}, fmt=None)
    os.remove(root / "events" / "energy-pkg.scale")
    (root / "events" / "energy-ram.unit").write_text("Watts\n")
    pmu = read_pmu(root)
    assert [(e.name, e.config, e.scale) for e in pmu.events] == [("energy-pkg", 2, 1.0)]


def test_parse_refusals(shm: Path) -> None:
    with pytest.raises(MeterUnavailable, match="does not exist"):
        read_pmu(shm / "nothing")
    root = fake_pmu(shm, events={})
    with pytest.raises(MeterUnavailable, match="no energy event"):
        read_pmu(root)
    (root / "cpumask").write_text("\n")
    with pytest.raises(MeterUnavailable, match="cpumask"):
        read_pmu(root)


@pytest.mark.skipif(os.path.isdir(DEFAULT_ROOT), reason="this machine has a power PMU")
def test_no_power_pmu_here() -> None:
    with pytest.raises(MeterUnavailable, match=DEFAULT_ROOT):
        open_perf()


@needs_perf
def test_real_syscall_with_a_moving_counter(shm: Path) -> None:
    root = fake_pmu(
        shm,
        pmu_type=PERF_TYPE_SOFTWARE,
        cpumask="0",
        events={"energy-pkg": f"event={SW_CPU_CLOCK}"},
        scale="1e-9",
    )
    m = open_perf(root, settle=0.02)
    assert m.kind == "perf" and m.measured and m.domains == ("package-0",)
    assert m.max_period == float("inf")  # 64-bit counts, the kernel undoes the wrap
    a = m.read().joules["package-0"]
    b = m.read().joules["package-0"]
    assert 0 < a <= b


@needs_perf
def test_stuck_counter_is_refused(shm: Path) -> None:
    # the accelerator machine's case: only energy-psys, and it stays at 0
    root = fake_pmu(
        shm, pmu_type=PERF_TYPE_SOFTWARE, cpumask="0", events={"energy-psys": f"event={SW_DUMMY}"}
    )
    with pytest.raises(MeterUnavailable, match="does not move") as e:
        open_perf(root, settle=0.02)
    assert str(root) in str(e.value) and "psys" in str(e.value)


@needs_perf
def test_stuck_psys_beside_moving_package_is_fine(shm: Path) -> None:
    root = fake_pmu(
        shm,
        pmu_type=PERF_TYPE_SOFTWARE,
        cpumask="0",
        events={"energy-pkg": f"event={SW_CPU_CLOCK}", "energy-psys": f"event={SW_DUMMY}"},
        scale="1e-9",
    )
    m = open_perf(root, settle=0.02)
    assert m.domains == ("package-0", "psys") and m.total_domains == ("package-0",)


def test_kernel_refuses_unknown_type(shm: Path) -> None:
    root = fake_pmu(shm, pmu_type=987654, cpumask="0")
    with pytest.raises(MeterUnavailable, match="perf_event_open"):
        open_perf(root)


@needs_perf
def test_paranoid_refusal_gives_the_fix() -> None:
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if paranoid <= 0:
        pytest.skip("perf_event_paranoid <= 0: unprivileged system-wide events are allowed")
    d = mt.shared_tmpdir()
    try:
        root = fake_pmu(
            d,
            pmu_type=PERF_TYPE_SOFTWARE,
            cpumask="0",
            events={"energy-pkg": f"event={SW_CPU_CLOCK}"},
            scale="1e-9",
        )
        out = mt.run_as_nobody(lambda: open_perf(root, settle=0.02))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert out.startswith("MeterUnavailable:"), out
    assert "perf_event_paranoid" in out and "sysctl kernel.perf_event_paranoid=0" in out
    assert "run as root" in out and "CAP_PERFMON" in out


@pytest.mark.parametrize(("settle", "exc"), [(0, ValueError), (2, ValueError), ("1", TypeError)])
def test_bad_settle(shm: Path, settle: object, exc: type) -> None:
    with pytest.raises(exc, match="settle"):
        open_perf(fake_pmu(shm), settle=settle)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"pmu_type": 2**40}, "not a perf type"),
        ({"pmu_type": -3}, "not a perf type"),
        ({"cpumask": "0,99999999999"}, "out of range"),
        ({"scale": "inf"}, "no energy event"),
        ({"scale": "nan"}, "no energy event"),
        ({"fmt": "config:0-70"}, "no energy event"),
        ({"events": {"energy-pkg": "event=0x1" + "0" * 30}}, "no energy event"),
    ],
)
def test_out_of_range_pmu_files_are_unavailable(
    shm: Path, kwargs: dict[str, object], pattern: str
) -> None:
    """Values the kernel never writes: a MeterUnavailable (so that auto falls
    back), never an OverflowError from the C call."""
    root = fake_pmu(shm, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(MeterUnavailable, match=pattern):
        open_perf(root)


def test_perf_arguments(shm: Path) -> None:
    with pytest.raises(ValueError, match="settle"):
        open_perf(fake_pmu(shm), settle=10**400)
    with pytest.raises(TypeError, match="root"):
        open_perf(1)  # type: ignore[arg-type]
    with pytest.raises(MeterUnavailable, match="does not exist"):
        open_perf(shm / "absent")  # a pathlib.Path is taken
