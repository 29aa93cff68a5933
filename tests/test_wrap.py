"""Counter wrap through the real C counter source, on fake MSR and powercap
files: random traces whose every step is shorter than the modulus.

Property: after each read, the accumulated energy equals the true energy
(the sum of the steps) to within one counter unit, and never decreases.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nrgloops.meters.msr import open_msr
from nrgloops.meters.powercap import open_powercap
from tests.fakes import msr_tree as mt
from tests.fakes import powercap_tree as pt

MOD32 = 2**32
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    step = st.one_of(st.integers(0, min(1000, limit - 1)),
                     st.integers(max(0, limit - 1000), limit - 1),
                     st.integers(0, limit - 1))
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


@SETTINGS
@given(
    max_range=st.one_of(st.integers(1, 10_000), st.integers(1, 2**40),
                        st.just(pt.CLIENT_RANGE_UJ), st.just(pt.DRAM_RANGE_UJ)),
    data=st.data(),
)
def test_powercap_wrap(shm: Path, max_range: int, data: st.DataObject) -> None:
    modulus = max_range + 1  # the kernel shows the largest value, not the modulus
    start = data.draw(st.integers(0, max_range), label="start")
    steps = data.draw(_steps(modulus), label="steps")
    base = _fresh(shm)
    tree = pt.PowercapTree(base)
    tree.add_zone("intel-rapl:0", "package-0", start, max_range_uj=max_range)
    m = open_powercap(tree.root)
    true_uj = 0
    last = 0.0
    for d in steps:
        tree.advance("intel-rapl:0", d)
        true_uj += d
        got = m.read().joules["package-0"]
        assert got >= last
        assert abs(got - true_uj * 1e-6) <= 1e-6 * (1 + 1e-9)
        last = got
    shutil.rmtree(base)


def test_powercap_modulus_rule(shm: Path) -> None:
    """From max_energy_range_uj to 0 is one microjoule: modulus = max + 1."""
    tree = pt.PowercapTree(_fresh(shm))
    tree.add_zone("intel-rapl:0", "package-0", 41, max_range_uj=41)
    m = open_powercap(tree.root)
    tree.set_energy("intel-rapl:0", 0)
    assert m.read().joules["package-0"] == pytest.approx(1e-6)
    tree.set_energy("intel-rapl:0", 41)  # a full turn less one
    assert m.read().joules["package-0"] == pytest.approx(42e-6)


def test_msr_wrap_is_modulo_2_32(shm: Path) -> None:
    tree = mt.intel_client(_fresh(shm))
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 1)
    m = open_msr(**tree.options())
    tree.set_counter(0, mt.INTEL_PKG, 0)
    assert m.read().joules["package-0"] == pytest.approx(2.0**-14)
    tree.set_counter(0, mt.INTEL_PKG, MOD32 - 2)  # the largest step the bound allows
    assert m.read().joules["package-0"] == pytest.approx((MOD32 - 1) * 2.0**-14)
