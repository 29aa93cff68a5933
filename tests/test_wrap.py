"""Counter wrap and counter reset through the real C counter source, on fake
MSR and powercap files.

Wrap property: after each read of a random trace whose every step is
shorter than the modulus, the accumulated energy equals the true energy (the
sum of the steps) and never decreases: within one counter unit for the MSRs;
for powercap, whose files show floored microjoules, within 1 uJ however many
wraps (the unit is recovered in whole nJ, so each wrap is exact).  These run
with the reset bound lifted (a full-range step in a millisecond is a wrap
only to the arithmetic); the reset tests below keep it.

Reset property: a step beyond the physical bound (1 kW over the interval,
plus 50 ms) is not booked; it is counted in ``Meter.resets``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nrgloops import Sampler
from nrgloops._fakes import msr_tree as mt
from nrgloops._fakes import powercap_tree as pt
from nrgloops.meters import msr, powercap
from nrgloops.meters.msr import open_msr
from nrgloops.meters.powercap import energy_unit_nj, open_powercap, wrap_modulus_nj

MOD32 = 2**32
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def no_reset_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift the physical bound: any step shorter than the modulus is a wrap."""
    monkeypatch.setattr(msr, "WRAP_BOUND_WATTS", 1e18)
    monkeypatch.setattr(powercap, "WRAP_BOUND_WATTS", 1e18)


_n = iter(range(10**9))


def _fresh(shm: Path) -> Path:
    d = shm / f"case{next(_n)}"
    d.mkdir()
    return d


def _steps(limit: int) -> st.SearchStrategy[list[int]]:
    # small steps, steps near the modulus, and everything between
    step = st.one_of(
        st.integers(0, min(1000, limit - 1)),
        st.integers(max(0, limit - 1000), limit - 1),
        st.integers(0, limit - 1),
    )
    return st.lists(step, min_size=1, max_size=40)


@SETTINGS
@given(
    vendor=st.sampled_from(["intel", "amd"]),
    esu=st.sampled_from([14, 16]),
    start=st.integers(0, MOD32 - 1),
    steps=_steps(MOD32),
)
def test_msr_wrap(
    shm: Path, no_reset_bound: None, vendor: str, esu: int, start: int, steps: list[int]
) -> None:
    base = _fresh(shm)
    if vendor == "intel":
        tree = mt.intel_client(base, esu=esu)
        cpu, address = 0, mt.INTEL_PKG
    else:
        tree = mt.amd_epyc(base, packages=1, cores=2, threads=1, esu=esu)
        cpu, address = 0, mt.AMD_PKG
    tree.set_counter(cpu, address, start or 1)  # non-zero at open: present
    m = open_msr(**tree.options())
    unit = 2.0**-esu
    true_units = 0
    last = 0.0
    for d in steps:
        tree.advance(cpu, address, d)
        true_units += d
        got = m.read().joules["package-0"]
        assert got >= last  # never decreasing
        assert abs(got - true_units * unit) <= unit
        last = got
    shutil.rmtree(base)


# Units the kernel shows (whole nJ): 2^-14 J (Intel), 2^-15 J, 2^-16 J (AMD,
# Sandy Bridge), server DRAM's 15.3 uJ, Sapphire Rapids' 1 J psys, and the
# Atom decoding (2^ESU uJ).
REAL_UNITS_NJ = (
    pt.CLIENT_UNIT_NJ,
    10**9 >> 15,
    10**9 >> 16,
    pt.DRAM_UNIT_NJ,
    10**9,
    1000,
    2000,
    32000,
)


@SETTINGS
@example(unit_nj=pt.CLIENT_UNIT_NJ, start=MOD32 - 10, steps=[20, MOD32 - 1, 5])
@example(unit_nj=pt.DRAM_UNIT_NJ, start=MOD32 - 1, steps=[1] * 5 + [MOD32 - 1] * 3)
@given(
    unit_nj=st.sampled_from(REAL_UNITS_NJ),
    start=st.integers(0, MOD32 - 1),
    steps=_steps(MOD32),
)
def test_powercap_wrap(
    shm: Path, no_reset_bound: None, unit_nj: int, start: int, steps: list[int]
) -> None:
    """The kernel-faithful fake: raw units modulo 2^32, energy_uj floored.
    The meter is within 1 uJ of the true energy, however many wraps."""
    base = _fresh(shm)
    tree = pt.PowercapTree(base)
    tree.add_zone("intel-rapl:0", "package-0", unit_nj=unit_nj)
    tree.set_raw("intel-rapl:0", start)
    m = open_powercap(tree.root)
    true_nj = 0
    last = 0.0
    for d in steps:
        true_nj += d * unit_nj
        tree.advance_raw("intel-rapl:0", d)
        got = m.read().joules["package-0"]
        assert got >= last  # never decreasing
        got_uj = got / 1e-6
        # 1e-15: the C double and this division, a few ulps of ~1e17 uJ at most
        assert abs(got_uj - true_nj / 1000) <= 1 + 1e-15 * true_nj / 1000, (got_uj, true_nj)
        last = got
    shutil.rmtree(base)


def test_powercap_wrap_counts_one_unit_not_one_uj(shm: Path) -> None:
    """From max_energy_range_uj to 0 is one RAPL unit (61.035 uJ at 2^-14 J):
    the old rule, modulus = max + 1, counted 1 uJ here."""
    tree = pt.PowercapTree(_fresh(shm))
    tree.add_zone("intel-rapl:0", "package-0")
    tree.set_raw("intel-rapl:0", MOD32 - 1)
    before = tree.energy["intel-rapl:0"]
    assert before == pt.CLIENT_RANGE_UJ  # the largest value the kernel shows
    m = open_powercap(tree.root)
    true_uj = tree.advance_raw("intel-rapl:0", 1)  # wraps to raw 0, energy_uj 0
    assert tree.energy["intel-rapl:0"] == 0 and true_uj == pytest.approx(61.035)
    old_rule_uj = (0 - before) % (pt.CLIENT_RANGE_UJ + 1)
    assert old_rule_uj == 1  # what the old rule counted: 60 uJ lost
    got_uj = m.read().joules["package-0"] / 1e-6
    assert abs(got_uj - true_uj) < 1
    assert m.resets == 0


def test_powercap_many_wraps_stay_within_one_uj(shm: Path, no_reset_bound: None) -> None:
    """Tens of wraps, each ending on a value the floor rounds: the total stays
    within 1 uJ of the truth (rounding the modulus to whole uJ drifted by up
    to ~0.8 uJ a wrap, past one unit after tens of wraps)."""
    for unit_nj in (pt.CLIENT_UNIT_NJ, pt.DRAM_UNIT_NJ, 10**9 >> 16, 10**9 >> 15):
        tree = pt.PowercapTree(_fresh(shm))
        tree.add_zone("intel-rapl:0", "package-0", unit_nj=unit_nj)
        tree.set_raw("intel-rapl:0", 12345)
        m = open_powercap(tree.root)
        true_nj = 0
        for i in range(60):
            step = MOD32 - 1 - (i * 7919) % 100_000  # almost a full turn: one wrap a read
            tree.advance_raw("intel-rapl:0", step)
            true_nj += step * unit_nj
            got_uj = m.read().joules["package-0"] / 1e-6
            assert abs(got_uj - true_nj / 1000) <= 1 + 1e-15 * true_nj / 1000, (unit_nj, i)


def test_energy_unit_is_recovered_exactly() -> None:
    """energy_unit_nj inverts the kernel's floor((2^32 - 1) * unit / 1000) for
    every real unit and every 2^-ESU J unit of at least 1 nJ; the modulus is
    then exact: 2^32 units."""
    units = set(REAL_UNITS_NJ) | {10**9 >> esu for esu in range(30)}
    for unit_nj in units:
        shown_max = pt.max_range_uj(unit_nj)
        assert energy_unit_nj(shown_max) == unit_nj, unit_nj
        assert wrap_modulus_nj(shown_max) == MOD32 * unit_nj
    assert Fraction(wrap_modulus_nj(pt.CLIENT_RANGE_UJ), 1000) == Fraction(MOD32 * 61035, 1000)


@pytest.mark.parametrize("bad", [0, -5, 10**30, 2**64])
def test_malformed_max_energy_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_energy_range_uj"):
        wrap_modulus_nj(bad)


def test_msr_wrap_is_modulo_2_32(shm: Path, no_reset_bound: None) -> None:
    tree = mt.intel_client(_fresh(shm))
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 1)
    m = open_msr(**tree.options())
    tree.set_counter(0, mt.INTEL_PKG, 0)
    assert m.read().joules["package-0"] == pytest.approx(2.0**-14)
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 2)  # the largest step one read pair counts
    assert m.read().joules["package-0"] == pytest.approx((MOD32 - 1) * 2.0**-14)


# -- resets ------------------------------------------------------------------

# A step of at most this many joules is always within the bound (1 kW over
# the 50 ms of slack alone), however long the test takes between reads.
SAFE_STEP_J = 40.0


@SETTINGS
@given(
    trace=st.lists(
        st.one_of(
            st.tuples(st.just("step"), st.floats(0.0, SAFE_STEP_J)),
            st.tuples(st.just("reset"), st.floats(0.0, 1.0)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_msr_reset_is_counted_not_booked(shm: Path, trace: list[tuple[str, float]]) -> None:
    """Random traces of plausible steps and resets (the counter restarts near
    0, as after resume): the steps are booked to one unit, the resets are
    not booked at all, and each one is counted."""
    tree = mt.intel_client(_fresh(shm))
    unit = 2.0**-14
    tree.set_counter(0, mt.INTEL_PKG, 1000)
    m = open_msr(**tree.options())
    raw, true_units, resets = 1000, 0, 0
    for what, x in trace:
        if what == "step":
            d = int(x / unit)
            raw = (raw + d) % MOD32
            true_units += d
        else:  # restart below where it was: as a wrap it would be ~262 kJ
            new = int(x * raw)
            if new >= raw:
                continue
            raw = new
            resets += 1
        tree.set_counter(0, mt.INTEL_PKG, raw)
        got = m.read().joules["package-0"]
        assert abs(got - true_units * unit) <= unit, (got, true_units * unit)
    assert m.resets == resets


def test_powercap_reset_is_counted_not_booked(shm: Path) -> None:
    tree = pt.PowercapTree(_fresh(shm))
    tree.add_zone("intel-rapl:0", "package-0", 50_000_000)  # 50 J
    m = open_powercap(tree.root)
    true_uj = tree.advance("intel-rapl:0", 2_000_000)
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=1e-6)
    tree.set_raw("intel-rapl:0", 3)  # driver reload: back to 3 units
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=1e-6)
    assert m.resets == 1
    true_uj += tree.advance("intel-rapl:0", 1_000_000)  # counts on from there
    assert m.read().joules["package-0"] == pytest.approx(true_uj * 1e-6, abs=2e-6)
    assert m.resets == 1


def test_sampler_counts_a_reset_and_says_so(shm: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = mt.intel_client(_fresh(shm))
    tree.set_counter(0, mt.INTEL_PKG, 10**6)
    m = open_msr(**tree.options())
    with caplog.at_level(logging.WARNING, logger="nrgloops"), Sampler(m, period=0.002) as s:
        tree.set_counter(0, mt.INTEL_PKG, 10)  # a reset, seen by the thread
        deadline = time.monotonic() + 5
        while s.resets == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert s.resets == 1
        assert s.energy() < 1.0  # not the 262 kJ a wrap would have booked
    assert "reset 1 time(s)" in caplog.text and "not booked" in caplog.text
