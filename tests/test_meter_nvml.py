"""The NVML meter against a fake libnvidia-ml built here with gcc.

tests/fakes/fake_nvml.c exports the NVML getters the meter calls (same
signatures, same nvmlFieldValue_t layout) and a control API; the C meter
dlopens the .so like the real library and the test drives the same loaded
copy through ctypes.  The real-GPU test at the end is skipped without a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nrgloops import MeterUnavailable, Sampler, open_meter
from nrgloops.meters import nvml
from nrgloops.meters.nvml import NvmlMeter, open_nvml

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"

# call ids of fake_nvml.c
INIT, COUNT, HANDLE, ENERGY, FIELDS, FIELD_ENTRY, NAME = range(7)
NOT_SUPPORTED, NO_PERMISSION, DRIVER_NOT_LOADED, GPU_IS_LOST, NOT_READY = 3, 4, 9, 15, 27


class Fake:
    """ctypes handle on the fake library, the very copy the meter loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.lib = ctypes.CDLL(self.path, mode=ctypes.RTLD_GLOBAL)
        lib = self.lib
        lib.fake_nvml_set_energy_mj.argtypes = [ctypes.c_ulonglong]
        lib.fake_nvml_set_power_mw.argtypes = [ctypes.c_double]
        lib.fake_nvml_simulate.argtypes = [ctypes.c_double, ctypes.c_double]
        lib.fake_nvml_true_joules.restype = ctypes.c_double
        lib.fake_nvml_calls.restype = ctypes.c_ulonglong
        lib.fake_nvml_setter_calls.restype = ctypes.c_ulonglong

    def reset(self) -> None:
        self.lib.fake_nvml_reset()

    def status(self, call: int, code: int) -> None:
        self.lib.fake_nvml_set_status(call, code)

    def energy_mj(self, mj: int) -> None:
        self.lib.fake_nvml_set_energy_mj(mj)

    def power_mw(self, mw: float) -> None:
        self.lib.fake_nvml_set_power_mw(mw)

    def simulate(self, watts: float, update_period: float = 0.1) -> None:
        self.lib.fake_nvml_simulate(watts, update_period)

    def true_joules(self) -> float:
        return float(self.lib.fake_nvml_true_joules())

    def calls(self, call: int) -> int:
        return int(self.lib.fake_nvml_calls(call))

    @property
    def inits(self) -> int:
        return int(self.lib.fake_nvml_inits())


def _build(src: Path, out: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: the fake libnvidia-ml cannot be built")
    # csrc/ for nvml_api.h: the fake uses the meter's own NVML types and layout
    cc = [gcc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-I", str(ROOT / "csrc")]
    subprocess.run(
        [*cc, "-o", str(out), str(src), "-lpthread"],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def fake_so(tmp_path_factory: pytest.TempPathFactory) -> Fake:
    d = tmp_path_factory.mktemp("fake_nvml")
    return Fake(_build(FAKES / "fake_nvml.c", d / "libfake-nvml.so"))


@pytest.fixture()
def fake(fake_so: Fake) -> Iterator[Fake]:
    fake_so.reset()
    yield fake_so
    gc.collect()  # meters the test dropped release NVML now
    assert fake_so.lib.fake_nvml_setter_calls() == 0, "the meter called an NVML setter"
    assert fake_so.inits == 0, "nvmlInit_v2 not matched by nvmlShutdown"


def _open(fake: Fake, mode: str = "auto", index: int = 0) -> NvmlMeter:
    return open_nvml(index=index, library=fake.path, mode=mode)


# -- opening ------------------------------------------------------------------


def test_missing_library_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    match = r"no NVIDIA driver: .*libnvidia-ml\.so\.1 not found"
    with pytest.raises(MeterUnavailable, match=match):
        open_nvml(library=str(tmp_path / "libnvidia-ml.so.1"))


def test_no_driver_on_this_machine_is_unavailable() -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(MeterUnavailable, match="no NVIDIA driver"):
        open_meter("nvml")


def test_library_without_nvml_symbols_is_unavailable(tmp_path: Path) -> None:
    src = tmp_path / "empty.c"
    src.write_text("int not_nvml(void) { return 0; }\n")
    so = _build(src, tmp_path / "libempty.so")
    with pytest.raises(MeterUnavailable, match="has no symbol nvmlInit_v2"):
        open_nvml(library=str(so))


def test_index_out_of_range(fake: Fake) -> None:
    match = r"GPU index 3 out of range: 1 GPU \(choose index 0\.\.0"
    with pytest.raises(MeterUnavailable, match=match):
        _open(fake, index=3)
    fake.lib.fake_nvml_set_count(0)
    with pytest.raises(MeterUnavailable, match="GPU index 0 out of range: no GPUs"):
        _open(fake)


def test_init_failure_names_the_nvml_status(fake: Fake) -> None:
    fake.status(INIT, DRIVER_NOT_LOADED)
    match = r'NVML_ERROR_DRIVER_NOT_LOADED \("Driver Not Loaded"\)'
    with pytest.raises(MeterUnavailable, match=match):
        _open(fake)


def test_permission_refused_on_the_handle(fake: Fake) -> None:
    fake.status(HANDLE, NO_PERMISSION)
    with pytest.raises(MeterUnavailable, match="refused access.*NO_PERMISSION"):
        _open(fake)


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"index": -1}, ValueError, "index"),
        ({"index": "0"}, TypeError, "index"),
        ({"index": True}, TypeError, "index"),
        ({"mode": "fast"}, ValueError, "mode"),
        ({"library": 3}, TypeError, "library"),
        ({"library": True}, TypeError, "library"),
        ({"index": 10**30}, ValueError, "index"),  # not an OverflowError in the C call
        ({"index": 2**32}, ValueError, "index"),
        ({"mode": ["auto"]}, ValueError, "mode"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception], word: str) -> None:
    with pytest.raises(exc, match=word):
        open_nvml(**kwargs)  # type: ignore[arg-type]


def test_meter_facts(fake: Fake) -> None:
    fake.energy_mj(5)
    m = open_meter("nvml", index=0, library=fake.path)
    assert isinstance(m, NvmlMeter)
    assert (m.kind, m.measured, m.label, m.domains) == ("nvml", True, "measured", ("gpu-0",))
    assert m.resolution_s == 0.1
    assert m.mode == "energy" and m.default_period == nvml.ENERGY_PERIOD_S == 0.025
    assert m.gpu_name == "Fake NVIDIA H200 #0" and m.driver == "999.99-fake"
    assert "energy counter" in m.description and "Fake NVIDIA H200" in m.description
    p = _open(fake, mode="power")
    assert p.mode == "power" and p.default_period == nvml.POWER_PERIOD_S == 0.02
    assert "instant power" in p.description
    fake.lib.fake_nvml_set_count(2)
    assert _open(fake, index=1).domains == ("gpu-1",)


def test_two_meters_share_one_nvml_init(fake: Fake) -> None:
    a = _open(fake)
    b = _open(fake, mode="power")
    assert fake.inits == 1
    del a
    gc.collect()
    assert fake.inits == 1
    del b
    gc.collect()
    assert fake.inits == 0


# -- energy mode ----------------------------------------------------------------


def test_energy_counter_steps(fake: Fake) -> None:
    fake.energy_mj(1_000_000)
    m = _open(fake, mode="energy")
    r0 = m.read()
    assert r0.joules == {"gpu-0": 0.0}
    fake.energy_mj(1_002_500)
    t_before = time.monotonic()
    r1 = m.read()
    assert r1.joules["gpu-0"] == pytest.approx(2.5)
    # stamped midway between the read that saw the old value and this one
    assert r0.time < r1.time < t_before + 0.01
    r2 = m.read()  # unchanged counter: the same reading, the same stamp
    assert (r2.time, r2.joules) == (r1.time, r1.joules)
    fake.energy_mj(1_003_000)
    assert m.read().joules["gpu-0"] == pytest.approx(3.0)


def test_energy_counter_going_back_never_decreases_the_total(fake: Fake) -> None:
    fake.energy_mj(50_000)
    m = _open(fake, mode="energy")
    fake.energy_mj(52_000)
    assert m.read().joules["gpu-0"] == pytest.approx(2.0)
    fake.energy_mj(10)  # driver reloaded: the counter restarts
    assert m.read().joules["gpu-0"] == pytest.approx(2.0)
    fake.energy_mj(1_010)
    assert m.read().joules["gpu-0"] == pytest.approx(3.0)


# -- power mode -----------------------------------------------------------------


@pytest.mark.parametrize("value_type", [0, 1, 3, 5])  # double, uint, ull, int
def test_power_integration_is_a_trapezoid(fake: Fake, value_type: int) -> None:
    fake.lib.fake_nvml_set_value_type(value_type)
    fake.power_mw(100_000)  # 100 W
    m = _open(fake, mode="power")
    r1 = m.read()
    time.sleep(0.02)
    r2 = m.read()
    assert r2.joules["gpu-0"] - r1.joules["gpu-0"] == pytest.approx(100 * (r2.time - r1.time))
    fake.power_mw(300_000)
    time.sleep(0.02)
    r3 = m.read()
    assert r3.joules["gpu-0"] - r2.joules["gpu-0"] == pytest.approx(200 * (r3.time - r2.time))


def test_auto_falls_back_to_power_when_energy_is_not_supported(fake: Fake) -> None:
    fake.status(ENERGY, NOT_SUPPORTED)
    fake.power_mw(50_000)
    m = _open(fake)
    assert m.mode == "power"
    assert "refused" in m.description and '"Not Supported"' in m.description
    with pytest.raises(MeterUnavailable, match="refused its energy counter.*NOT_SUPPORTED"):
        _open(fake, mode="energy")
    fake.status(ENERGY, NOT_READY)
    with pytest.raises(MeterUnavailable, match="System is not in ready state.*mode='auto'"):
        _open(fake, mode="energy")


def test_auto_does_not_trust_a_counter_that_never_moves(fake: Fake) -> None:
    fake.energy_mj(777)  # readable, never moves
    fake.power_mw(90_000)
    m = _open(fake)
    assert m.mode == "power"
    assert "did not move in 0.25 s" in m.description
    assert _open(fake, mode="energy").mode == "energy"  # asked for: kept


def test_first_window_after_open_is_right(fake: Fake) -> None:
    fake.simulate(300.0, update_period=0.1)
    time.sleep(0.05)
    m = _open(fake, mode="energy")  # the first reading is stamped at a step
    with Sampler(m, period=0.01) as s:
        s.watch(0.3)
        time.sleep(0.36)
        assert s.power(window=0.3) == pytest.approx(300.0, rel=0.1)


def test_neither_reading_supported_is_unavailable(fake: Fake) -> None:
    fake.status(ENERGY, NOT_SUPPORTED)
    fake.status(FIELD_ENTRY, NOT_SUPPORTED)  # the field's own status
    with pytest.raises(MeterUnavailable, match="neither the energy counter nor the instant power"):
        _open(fake)


# -- the 100 ms update period -------------------------------------------------------


def test_readings_move_only_every_update(fake: Fake) -> None:
    fake.simulate(300.0, update_period=0.1)
    m = _open(fake, mode="energy")
    seen = []
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        seen.append(m.read())
        time.sleep(0.005)
    values = {r.joules["gpu-0"] for r in seen}
    stamps = {r.time for r in seen}
    assert 4 <= len(values) <= 6, len(values)  # 0.5 s of 100 ms steps
    assert len(stamps) == len(values)  # one stamp per step
    steps = sorted(values)
    # each step is 100 ms of 300 W
    diffs = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert diffs == pytest.approx([30.0] * len(diffs), abs=0.01)


@pytest.mark.parametrize("mode", ["energy", "power"])
def test_windowed_power_through_steps(fake: Fake, mode: str) -> None:
    """A 0.3 s window over 100 ms steps: step stamps keep it within a few %
    (read-time stamps would swing by a third: 2, 3 or 4 steps a window)."""
    fake.simulate(300.0, update_period=0.1)
    m = _open(fake, mode=mode)
    with Sampler(m, period=0.01) as s:
        s.watch(0.3)
        time.sleep(0.45)
        after = time.monotonic()
        time.sleep(0.6)
        _, w = s.series(after, window=0.3)
        assert len(w) > 10
        assert min(w) > 300 * 0.9 and max(w) < 300 * 1.1, (min(w), max(w))
        fake.simulate(100.0, update_period=0.1)  # a step down
        time.sleep(0.55)
        assert s.power(window=0.3) == pytest.approx(100.0, rel=0.1)
        assert s.errors == 0


def test_sampler_energy_matches_the_truth(fake: Fake) -> None:
    fake.simulate(250.0, update_period=0.1)
    m = _open(fake, mode="energy")
    with Sampler(m) as s:  # the meter's default period, 25 ms
        j0 = fake.true_joules()
        time.sleep(0.8)
        measured = s.energy()
        truth = fake.true_joules() - j0
        assert s.samples >= 20
    # the counter shows energy up to its last step: at most ~one step behind
    assert truth - 25.0 - 5.0 <= measured <= truth + 5.0


# -- errors mid-run -----------------------------------------------------------------


@contextmanager
def _failing_mid_run(
    fake: Fake, watts: float, mode: str, call: int, code: int, match: str
) -> Iterator[tuple[NvmlMeter, Sampler, float]]:
    """A `mode` meter sampled every 10 ms on a simulated `watts` GPU reads
    cleanly for 0.35 s, then `call` answers `code` for 0.1 s: the failure must
    show in last_status, in read()'s error (`match`) and in the sampler's
    error count.  Yields (meter, sampler, true J at the start), still failing."""
    fake.simulate(watts, update_period=0.1)
    m = _open(fake, mode=mode)
    with Sampler(m, period=0.01) as s:
        j0 = fake.true_joules()
        s.watch(0.3)
        time.sleep(0.35)
        fake.status(call, code)
        time.sleep(0.1)
        assert m.last_status == code
        with pytest.raises(MeterUnavailable, match=match):
            m.read()
        assert s.errors >= 5
        yield m, s, j0


def test_not_ready_mid_run_is_counted_and_survived(fake: Fake) -> None:
    not_ready = "System is not in ready state"  # nvmlErrorString(NOT_READY)
    with _failing_mid_run(fake, 200.0, "energy", ENERGY, NOT_READY, not_ready) as (m, s, j0):
        # 10 failed reads in a row: the power is stale, published as NaN, no crash
        assert s.stale and math.isnan(s.power(window=0.3))
        fake.status(ENERGY, 0)
        time.sleep(0.45)
        assert m.last_status == 0 and m.mode == "energy" and not s.stale
        assert s.power(window=0.3) == pytest.approx(200.0, rel=0.1)
        settled = s.errors
        time.sleep(0.05)
        assert s.errors == settled  # no more failures once NVML is ready
        # the counter is cumulative: no energy was lost over the gap, the
        # total is at most one 100 ms step (20 J) behind the truth
        truth = fake.true_joules() - j0
        assert truth - 20.0 - 4.0 <= s.energy() <= truth + 4.0


def test_auto_moves_to_power_when_energy_stays_refused(fake: Fake) -> None:
    fake.simulate(150.0, update_period=0.1)
    m = _open(fake)
    assert m.mode == "energy"
    with Sampler(m, period=0.01) as s:
        time.sleep(0.3)
        before = s.energy()
        fake.status(ENERGY, NOT_READY)
        time.sleep(0.5)  # 20 refusals in a row (0.2 s), then power mode
        assert m.mode == "power"
        assert s.errors >= 19  # the 20th refusal is answered by a power read
        time.sleep(0.4)
        assert s.energy() > before
        assert s.power(window=0.3) == pytest.approx(150.0, rel=0.1)


def test_energy_mode_does_not_move_to_power(fake: Fake) -> None:
    fake.simulate(150.0, update_period=0.1)
    m = _open(fake, mode="energy")
    with Sampler(m, period=0.01) as s:
        fake.status(ENERGY, NOT_READY)
        time.sleep(0.35)
        assert m.mode == "energy" and s.errors >= 20
        fake.status(ENERGY, 0)


def test_gpu_lost_in_power_mode(fake: Fake) -> None:
    with _failing_mid_run(fake, 120.0, "power", FIELDS, GPU_IS_LOST, "GPU_IS_LOST") as (m, s, j0):
        fake.status(FIELDS, 0)
        time.sleep(0.2)
        n = s.samples
        time.sleep(0.05)
        assert s.samples > n  # still sampling
        # the gap was bridged by the trapezoid: the total carries on
        truth = fake.true_joules() - j0
        assert s.energy() == pytest.approx(truth, abs=120.0 * 0.1 + 3.0)


# -- on a real GPU ---------------------------------------------------------------


@pytest.mark.hardware
def test_real_gpu_reads_positive_power() -> None:
    try:
        m = open_nvml()
    except MeterUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    with Sampler(m) as s:
        time.sleep(0.6)
        assert s.power(window=0.3) > 10.0  # an idle H100/H200 draws ~80-125 W
        assert m.last_status == 0
