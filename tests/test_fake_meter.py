"""FakeMeter and the push source: the test doubles behave like meters."""

from __future__ import annotations

import math
import time

import pytest

from nrgloops import MeterUnavailable, NrgError
from nrgloops._ffi import ffi, lib, new_handle
from nrgloops.testing import FakeMeter


def test_fake_meter_contract() -> None:
    f = FakeMeter(watts=40.0)
    assert (f.kind, f.measured, f.domains, f.total_domains) == (
        "fake",
        True,
        ("package-0",),
        ("package-0",),
    )
    r0 = f.read()
    time.sleep(0.1)
    f.watts = 80.0
    time.sleep(0.1)
    r1 = f.read()
    dt = r1.time - r0.time
    de = r1.joules["package-0"] - r0.joules["package-0"]
    assert 40.0 * dt < de < 80.0 * dt
    assert f.watts == 80.0
    # simulated, whatever `measured` says (it only picks the code paths exercised)
    assert f.label == FakeMeter(measured=False).label == "simulated"


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_fake_meter_rejects_bad_watts(bad: float) -> None:
    with pytest.raises(ValueError, match="watts"):
        FakeMeter(watts=bad)
    f = FakeMeter()
    with pytest.raises(ValueError, match="watts"):
        f.watts = bad
    with pytest.raises(TypeError, match="watts"):
        f.watts = "40"  # type: ignore[assignment]


def test_push_source_keeps_time_forward_and_energy_monotonic() -> None:
    src = new_handle(lib.nrg_push_new, 2, what="push")
    t, out = ffi.new("double *"), ffi.new("double[2]")
    assert lib.nrg_push(src, 1.0, ffi.new("double[2]", [1.0, 2.0])) == 0
    assert lib.nrg_source_read(src, t, out) == 0
    assert (t[0], list(out)) == (1.0, [1.0, 2.0])
    assert lib.nrg_push(src, 0.5, ffi.new("double[2]", [3.0, 4.0])) < 0  # time backwards
    assert lib.nrg_push(src, 2.0, ffi.new("double[2]", [0.5, 4.0])) < 0  # energy backwards
    assert lib.nrg_push(src, 2.0, ffi.new("double[2]", [1.5, 4.0])) == 0


def test_c_errors_become_typed_exceptions() -> None:
    import errno

    from nrgloops._ffi import check

    assert check(3, "x") == 3
    with pytest.raises(MeterUnavailable, match="opening /dev/cpu/0/msr: .*modprobe msr"):
        check(-errno.ENOENT, "opening /dev/cpu/0/msr", "modprobe msr")
    with pytest.raises(MeterUnavailable, match="Permission denied"):
        check(-errno.EACCES, "reading energy_uj")
    with pytest.raises(NrgError, match="Invalid argument"):
        check(-errno.EINVAL, "adding a channel")
