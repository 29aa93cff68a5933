"""Sampler slots: power()'s automatic ones rank below explicit watches."""

from __future__ import annotations

import time

import pytest

from nrgloops import NrgError, PowerCap, Sampler, nrg_adapt
from nrgloops._ffi import lib
from nrgloops.testing import FakeMeter

PER_HANDLE = 8  # sampler.AUTO_WATCH_PER_HANDLE


def _fill_with_power_calls(m: FakeMeter) -> list[Sampler]:
    """Handles whose power() calls took every slot of the meter's sampler."""
    handles = [Sampler(m).start() for _ in range(lib.NRG_MAX_SLOTS // PER_HANDLE)]
    for k, h in enumerate(handles):
        for i in range(PER_HANDLE):
            h.power(0.01 + 0.001 * (k * PER_HANDLE + i))
    return handles


def test_a_loop_starts_when_power_calls_took_every_slot() -> None:
    m = FakeMeter(watts=3.0)
    handles = _fill_with_power_calls(m)
    try:
        f = nrg_adapt(PowerCap(5, meter=m))(lambda: "full")
        f.alternate(lambda: "alt")
        assert f() == "full"  # the loop watches its window: an automatic slot made room
        time.sleep(0.15)
        assert f.power == pytest.approx(3.0, rel=0.05)
        f.close()
        # the handle that lost its slot computes that window instead, still right
        for k, h in enumerate(handles):
            for i in range(PER_HANDLE):
                assert h.power(0.01 + 0.001 * (k * PER_HANDLE + i)) == pytest.approx(3.0, rel=0.05)
    finally:
        for h in handles:
            h.stop()


def test_explicit_watches_take_every_automatic_slot_back() -> None:
    m = FakeMeter(watts=7.0)
    handles = _fill_with_power_calls(m)
    with Sampler(m) as s:
        try:
            slots = {s.watch(0.5 + 0.001 * i) for i in range(lib.NRG_MAX_SLOTS)}
            assert len(slots) == lib.NRG_MAX_SLOTS
            with pytest.raises(NrgError, match="distinct .window, domain."):
                s.watch(0.9)  # every slot watched explicitly: nothing to take back
            time.sleep(0.05)
            assert handles[0].power(0.01) == pytest.approx(7.0, rel=0.05)  # computed
        finally:
            for h in handles:
                h.stop()


def test_power_then_watch_of_one_window_keeps_the_slot() -> None:
    m = FakeMeter(watts=2.0)
    with Sampler(m) as s:
        s.power(0.05)  # automatic first
        slot = s.watch(0.05)  # now explicit: no power() call can lose it
        handles = [Sampler(m).start() for _ in range(lib.NRG_MAX_SLOTS)]
        try:
            for i, h in enumerate(handles[:-1]):
                h.watch(0.2 + 0.001 * i)  # with s's: every slot
            with pytest.raises(NrgError, match="distinct"):
                handles[-1].watch(0.9)
            time.sleep(0.05)
            assert s.published[slot] == pytest.approx(2.0, rel=0.05)
        finally:
            for h in handles:
                h.stop()


def test_bools_are_not_windows() -> None:
    with Sampler(FakeMeter(watts=1.0)) as s:
        s.watch(1.0)  # the window True would hit as a dict key
        for bad in (True, False):
            with pytest.raises(TypeError, match="window"):
                s.power(bad)
