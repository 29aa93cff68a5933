"""Counter wrap through the real C counter source, on fake MSR and powercap
files: random traces whose every step is shorter than the modulus.

Property: after each read, the accumulated energy equals the true energy
(the sum of the steps) and never decreases: within one counter unit for the
MSRs; for powercap, whose files show floored microjoules, within 1 uJ plus
under 1 uJ per wrap.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nrgloops.meters.msr import open_msr
from nrgloops.meters.powercap import open_powercap, wrap_modulus_uj
from tests.fakes import msr_tree as mt
from tests.fakes import powercap_tree as pt

MOD32 = 2**32
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def shm() -> Iterator[Path]:
    d = mt.shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
def test_msr_wrap(shm: Path, vendor: str, esu: int, start: int, steps: list[int]) -> None:
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
def test_powercap_wrap(shm: Path, unit_nj: int, start: int, steps: list[int]) -> None:
    """The kernel-faithful fake: raw units modulo 2^32, energy_uj floored.
    The meter is within 1 uJ of the true energy, plus under 1 uJ a wrap."""
    base = _fresh(shm)
    tree = pt.PowercapTree(base)
    tree.add_zone("intel-rapl:0", "package-0", unit_nj=unit_nj)
    tree.set_raw("intel-rapl:0", start)
    m = open_powercap(tree.root)
    raw = start
    wraps = 0
    true_uj = 0.0
    last = 0.0
    for d in steps:
        true_uj += tree.advance_raw("intel-rapl:0", d)
        wraps += (raw + d) // MOD32
        raw = (raw + d) % MOD32
        got = m.read().joules["package-0"]
        assert got >= last  # never decreasing
        got_uj = got / 1e-6
        # 1e-15: the C double and this division, a few ulps of ~1e17 uJ at most
        assert abs(got_uj - true_uj) <= 1 + wraps + 1e-15 * true_uj, (got_uj, true_uj, wraps)
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
    # a full turn less one unit: the largest step one read pair can count
    true_uj += tree.advance_raw("intel-rapl:0", MOD32 - 1)
    got_uj = m.read().joules["package-0"] / 1e-6
    assert abs(got_uj - true_uj) < 2


def test_powercap_modulus_rule() -> None:
    """wrap_modulus_uj against the kernel's arithmetic, exactly: the true
    modulus is 2^32 units; whole microjoules leave under 1 uJ a wrap for the
    units real parts use, under 1.2 uJ for any 2^-ESU J unit."""
    for unit_nj in REAL_UNITS_NJ:
        shown_max = pt.max_range_uj(unit_nj)
        err = wrap_modulus_uj(shown_max) - Fraction(MOD32 * unit_nj, 1000)
        assert abs(err) < 1, (unit_nj, err)
    for esu in range(0, 30):  # every unit of at least 1 nJ
        unit_nj = 10**9 >> esu
        err = wrap_modulus_uj(pt.max_range_uj(unit_nj)) - Fraction(MOD32 * unit_nj, 1000)
        assert abs(err) < Fraction(6, 5), (esu, err)
    assert wrap_modulus_uj(41) == 42  # below half a uJ a unit: at least 1
    assert wrap_modulus_uj(2**32 - 1) == 2**32  # 1 uJ unit: exact
    with pytest.raises(ValueError, match="max_range_uj"):
        wrap_modulus_uj(0)


def test_msr_wrap_is_modulo_2_32(shm: Path) -> None:
    tree = mt.intel_client(_fresh(shm))
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 1)
    m = open_msr(**tree.options())
    tree.set_counter(0, mt.INTEL_PKG, 0)
    assert m.read().joules["package-0"] == pytest.approx(2.0**-14)
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 2)  # the largest step the bound allows
    assert m.read().joules["package-0"] == pytest.approx((MOD32 - 1) * 2.0**-14)
