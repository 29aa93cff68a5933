"""nrgloops.report.WindowStats: the one definition of average, peak and share over the cap."""

from __future__ import annotations

import math
import time

import pytest

from nrgloops.report import WindowStats
from nrgloops.sampler import Sampler
from nrgloops.testing import FakeMeter


def test_average_is_the_counter_energy_over_the_time_between_its_readings() -> None:
    fake = FakeMeter(20.0)
    with Sampler(fake) as s:
        time.sleep(0.05)
        stats = WindowStats(s, 0.01, cap_w=50.0)
        stats.begin()
        t_begin = stats.sampler.latest()[0]
        time.sleep(0.3)
        fake.watts = 80.0
        t_switch = time.monotonic()
        time.sleep(0.3)
        stats.end()
    t_end = t_begin + stats.duration_s
    expect = (20.0 * (t_switch - t_begin) + 80.0 * (t_end - t_switch)) / (t_end - t_begin)
    assert stats.average_w == pytest.approx(expect, rel=0.03)
    assert stats.energy_j == pytest.approx(stats.average_w * stats.duration_s)
    # time-weighted: about half of the run over the cap, whatever the sample count
    assert stats.over_share() == pytest.approx((t_end - t_switch) / (t_end - t_begin), abs=0.1)
    assert stats.peak_w == pytest.approx(80.0, rel=0.02)


def test_a_window_reaching_back_before_the_run_does_not_count() -> None:
    # 80 W before the run, 20 W during it: the samples of the run's first
    # window still average the 80 W and would put the peak over the cap
    fake = FakeMeter(80.0)
    with Sampler(fake) as s:
        time.sleep(0.25)
        fake.watts = 20.0
        stats = WindowStats(s, 0.1, cap_w=50.0)
        stats.begin()
        time.sleep(0.4)
        stats.end()
    # (a windowed power spans sampler rows: a late row can bring in a few ms
    # of the 80 W, so "about 20 W", far from the 80 W the early samples see)
    assert 19.0 < stats.peak_w < 25.0
    assert stats.over_share() == 0.0
    assert stats.covered_s == pytest.approx(stats.duration_s - 0.1, abs=0.03)


def test_a_run_shorter_than_its_window_counts_all_its_samples() -> None:
    fake = FakeMeter(80.0)
    with Sampler(fake) as s:
        time.sleep(0.25)
        fake.watts = 20.0
        stats = WindowStats(s, 0.5, cap_w=50.0)
        stats.begin()
        time.sleep(0.06)
        stats.end()
    # every sample's window reaches back into the 80 W: all over the cap
    assert stats.peak_w > 50.0
    assert stats.over_share() == 1.0


def test_no_cap_no_share_and_no_reading_no_average() -> None:
    with Sampler(FakeMeter(10.0)) as s:
        stats = WindowStats(s, 0.1)
        assert stats.over_share() is None
        assert math.isnan(stats.average_w) and math.isnan(stats.peak_w)
        with pytest.raises(RuntimeError, match="before begin"):
            stats.end()
