"""The pyrapl adapter: a daemon thread polling pyRAPL into a C push source."""

from __future__ import annotations

import gc
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nrgloops import MeterUnavailable, Sampler
from nrgloops._fakes import msr_tree as mt
from nrgloops._fakes import powercap_tree as pt
from nrgloops.meters import pyrapl as mod
from nrgloops.meters.pyrapl import PyRaplMeter, open_pyrapl

try:
    mod.import_pyrapl()
    HAVE_PYRAPL = True
except ImportError:
    HAVE_PYRAPL = False

needs_pyrapl = pytest.mark.skipif(not HAVE_PYRAPL, reason="pyRAPL is not installed")


class FakeSensor:
    """pyRAPL's Sensor.energy() shape: [pkg s0, dram s0, pkg s1, ...] in uJ, -1 if absent."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.lock = threading.Lock()

    def energy(self) -> list[float]:
        with self.lock:
            return list(self.values)

    def add(self, pos: int, uj: float) -> None:
        with self.lock:
            self.values[pos] += uj


@pytest.fixture
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_polls(m: PyRaplMeter, n: int = 2, timeout: float = 2.0) -> None:
    """Wait until the thread has polled ``n`` more times."""
    target = m._poller.polls + n
    deadline = time.monotonic() + timeout
    while m._poller.polls < target and time.monotonic() < deadline:
        time.sleep(0.001)
    assert m._poller.polls >= target, "the polling thread did not poll"


def test_missing_pyrapl_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyRAPL", None)  # import pyRAPL -> ImportError
    with pytest.raises(MeterUnavailable, match=r"pip install nrgloops\[pyrapl\]"):
        open_pyrapl()


@needs_pyrapl
@pytest.mark.skipif(Path("/sys/class/powercap/intel-rapl").exists(), reason="RAPL here")
def test_real_pyrapl_refuses_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyRAPL

    monkeypatch.setattr(pyRAPL, "_sensor", None)
    with pytest.raises(MeterUnavailable, match="pyRAPL"):
        open_pyrapl()


def test_domains_joules_and_close() -> None:
    sensor = FakeSensor([100.0, -1, 200.0, -1])  # two sockets, no DRAM
    with open_pyrapl(period=0.001, sensor=sensor) as m:
        assert m.kind == "pyrapl" and m.measured
        assert m.domains == ("package-0", "package-1")
        assert m.total_domains == ("package-0", "package-1")
        assert m.read().joules == {"package-0": 0.0, "package-1": 0.0}
        sensor.add(0, 1_500_000)
        sensor.add(2, 250_000)
        wait_polls(m)
        assert m.read().joules == pytest.approx({"package-0": 1.5, "package-1": 0.25})
        assert m.polling
    assert not m.polling  # close() joined the thread
    assert m.poll_errors == 0


def test_reuses_the_users_pyrapl_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("pyRAPL")
    fake._sensor = FakeSensor([5.0, 6.0])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyRAPL", fake)
    with open_pyrapl(period=0.005) as m:
        assert m.domains == ("package-0", "dram-0")


def test_unknown_wrap_loses_one_interval_never_decreases() -> None:
    sensor = FakeSensor([1000.0, 50.0])
    with open_pyrapl(period=0.001, sensor=sensor) as m:
        sensor.add(0, 2000)
        wait_polls(m)
        before = m.read().joules["package-0"]
        sensor.values[0] = 10.0  # a wrap of unknown size (no max_energy_range_uj)
        wait_polls(m)
        after = m.read().joules["package-0"]
        assert after == pytest.approx(before) and after >= before
        assert m.poll_errors >= 1


def test_a_jump_beyond_the_physical_bound_is_a_reset() -> None:
    sensor = FakeSensor([1000.0, 50.0])
    with open_pyrapl(period=0.001, sensor=sensor) as m:
        sensor.add(0, 2_000_000)  # 2 J: energy
        wait_polls(m)
        assert m.read().joules["package-0"] == pytest.approx(2.0)
        sensor.add(0, 10**12)  # 1 MJ in a millisecond: a counter that restarted
        wait_polls(m)
        assert m.read().joules["package-0"] == pytest.approx(2.0) and m.resets == 1
        sensor.add(0, 500_000)  # counts on from there
        wait_polls(m)
        assert m.read().joules["package-0"] == pytest.approx(2.5)


@needs_pyrapl
def test_real_pyrapl_on_fake_tree_with_wrap(shm: Path) -> None:
    tree = pt.server(shm, packages=2)
    sensor = pt.pyrapl_sensor(tree, packages=2)
    tree.set_energy("intel-rapl:1:0", pt.DRAM_RANGE_UJ - 10)
    with open_pyrapl(period=0.001, sensor=sensor) as m:
        assert m.domains == ("package-0", "dram-0", "package-1", "dram-1")
        # two 15.3 uJ units: wraps one unit past max_energy_range_uj (the old
        # rule, max + 1, counted 16 uJ here)
        dram_uj = tree.advance("intel-rapl:1:0", 25)
        assert tree.energy["intel-rapl:1:0"] == 15
        pkg_uj = tree.advance("intel-rapl:0", 3_000_000)
        wait_polls(m)
        r = m.read().joules
        assert r["dram-1"] == pytest.approx(dram_uj * 1e-6, abs=1e-6)
        assert r["package-0"] == pytest.approx(pkg_uj * 1e-6, abs=1e-6)
        assert m.poll_errors == 0
        with Sampler(m) as s:  # the C sampler reads the pushed values
            assert s.period == 0.001
            want = tree.advance("intel-rapl:1", 2_000_000) * 1e-6
            deadline = time.monotonic() + 2.0
            while s.energy() < want - 1e-6 and time.monotonic() < deadline:
                time.sleep(0.002)
            assert s.energy() == pytest.approx(want, abs=1e-6)


def test_thread_stops_when_meter_is_collected() -> None:
    m = open_pyrapl(period=0.001, sensor=FakeSensor([1.0, -1]))
    thread = m._thread
    assert thread.is_alive() and thread.daemon
    del m
    gc.collect()
    thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_refusals() -> None:
    with pytest.raises(MeterUnavailable, match="no package or DRAM"):
        open_pyrapl(sensor=FakeSensor([-1, -1]))

    class Broken:
        def energy(self) -> list[float]:
            raise OSError("gone")

    with pytest.raises(MeterUnavailable, match="gone"):
        open_pyrapl(sensor=Broken())


@pytest.mark.parametrize(
    ("period", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        ("0.1", TypeError),
        (True, TypeError),
    ],
)
def test_bad_period(period: object, exc: type) -> None:
    with pytest.raises(exc, match="period"):
        open_pyrapl(period=period, sensor=FakeSensor([1.0, 1.0]))  # type: ignore[arg-type]
