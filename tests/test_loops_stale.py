"""A stale meter end to end: the fake libnvidia-ml fails mid-run, the sampler
publishes NaN, and the loops degrade and warn once (no hardware needed)."""

from __future__ import annotations

import math
import time

import pytest

from nrgloops import Knob, PowerCap, nrg_adapt

# (the fixtures fake_so and fake: the fake libnvidia-ml, built once)
from tests.test_meter_nvml import ENERGY, NOT_READY, Fake, _open, fake, fake_so  # noqa: F401


def run_until(loop: object, step: object, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        step()  # type: ignore[operator]
        time.sleep(0.001)


def test_a_stale_meter_sends_the_knob_to_its_bottom_and_back(fake: Fake) -> None:  # noqa: F811
    fake.simulate(100.0, update_period=0.01)
    meter = _open(fake, mode="energy")
    knob = Knob(1, 4, 1)
    with nrg_adapt(PowerCap(500, window=0.3, meter=meter), knob=knob) as loop:
        run_until(loop, loop.step, 0.5)
        assert knob.value == 4 and not math.isnan(loop.power)  # under the cap: the top
        fake.status(ENERGY, NOT_READY)  # the GPU stops answering
        with pytest.warns(RuntimeWarning, match="windowed power is unknown") as caught:
            run_until(loop, loop.step, 0.3)
        assert math.isnan(loop.power) and knob.value == 1
        assert len([w for w in caught if "unknown" in str(w.message)]) == 1
        assert all(math.isfinite(p) for p in knob.model.p if p == p)
        fake.status(ENERGY, 0)  # it answers again
        run_until(loop, loop.step, 1.0)
        assert not math.isnan(loop.power) and knob.value == 4
    assert loop.report.knob is not None and loop.report.knob["stale_ticks"] > 0


def test_a_stale_meter_runs_the_alternate(fake: Fake) -> None:  # noqa: F811
    fake.simulate(100.0, update_period=0.01)
    meter = _open(fake, mode="energy")
    f = nrg_adapt(PowerCap(500, window=0.3, meter=meter))(lambda: "full")
    f.alternate(lambda: "alt")
    with f:
        run_until(f, f, 0.5)
        assert f() == "full"
        fake.status(ENERGY, NOT_READY)
        with pytest.warns(RuntimeWarning, match="running the alternate"):
            run_until(f, f, 0.3)
        assert f() == "alt"
