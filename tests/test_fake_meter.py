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
    # a bad argument is our error, not a source that is unavailable here
    with pytest.raises(NrgError, match="Invalid argument") as e:
        check(-errno.EINVAL, "adding a channel")
    assert type(e.value) is NrgError
    # per-call words for one errno, and "unavailable" for any errno
    with pytest.raises(NrgError, match="^x: 512 counters at most$") as e:
        check(-errno.ENOSPC, "x", "ignored", reasons={errno.ENOSPC: "512 counters at most"})
    assert type(e.value) is NrgError
    with pytest.raises(MeterUnavailable, match="x: Invalid argument; the kernel refused"):
        check(-errno.EINVAL, "x", "the kernel refused", unavailable=True)


def test_constructors_give_one_errno_per_failure() -> None:
    import errno

    from nrgloops._ffi import ffi

    out = ffi.new("nrg_source **")
    assert lib.nrg_counters_new(out, 0, 0.0) == -errno.EINVAL  # no domain
    assert lib.nrg_counters_new(out, lib.NRG_MAX_DOMAINS + 1, 0.0) == -errno.EINVAL
    assert lib.nrg_counters_new(out, 1, -1.0) == -errno.EINVAL
    assert lib.nrg_push_new(out, 0) == -errno.EINVAL
    assert lib.nrg_fake_new(out, -1.0) == -errno.EINVAL
    src = new_handle(lib.nrg_counters_new, 1, 0.0, what="counters")
    assert lib.nrg_counters_add_file(src, b"/nonexistent", 0, 0, 1, 1.0, 0, 0) == -errno.ENOENT
    assert lib.nrg_counters_add_file(src, b"/dev/null", 0, 0, 0, 1.0, 0, 0) == -errno.EINVAL


def test_fake_meter_measured_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="measured"):
        FakeMeter(measured="no")  # type: ignore[arg-type]
