"""The C sampler through its Python handle, driven by FakeMeter."""

from __future__ import annotations

import math
import os
import time

import pytest

from nrgloops import NrgError, Sampler, sampler
from nrgloops.testing import FakeMeter


def _threads() -> int:
    """Sampler threads of this process (the C thread names itself)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return names.count("nrg-sampler")


def _settled_threads(expected: int) -> int:
    """The count once a joined thread has left /proc (it lingers briefly)."""
    deadline = time.monotonic() + 2.0
    while (n := _threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_power_is_zero_before_the_second_sample() -> None:
    t0 = time.monotonic()
    with Sampler(FakeMeter(watts=50.0), period=5.0) as s:
        assert s.power(window=0.1) == 0.0
        assert s.samples == 1
    assert time.monotonic() - t0 < 1.0  # stopping does not wait out the 5 s period


def test_window_tracks_a_power_step() -> None:
    f = FakeMeter(watts=40.0)
    with Sampler(f, period=0.001) as s:
        s.watch(0.1)
        time.sleep(0.25)
        assert s.power(window=0.1) == pytest.approx(40.0, rel=0.02)
        f.watts = 80.0
        time.sleep(0.05)  # half the window at the new power
        mid = s.power(window=0.1)
        assert 45.0 < mid < 75.0
        time.sleep(0.2)
        assert s.power(window=0.1) == pytest.approx(80.0, rel=0.02)
        assert s.power(window=0.1, domain="package-0") == pytest.approx(80.0, rel=0.02)


def test_short_history_averages_over_what_there_is() -> None:
    with Sampler(FakeMeter(watts=30.0), period=0.001) as s:
        time.sleep(0.05)
        # 5 s window, 50 ms of history: the average so far, not 30 * 0.05 / 5
        assert s.power(window=5.0) == pytest.approx(30.0, rel=0.05)


def test_energy_integrates_power_over_time() -> None:
    f = FakeMeter(watts=20.0)
    with Sampler(f, period=0.001) as s:
        t0 = time.monotonic()
        time.sleep(0.2)
        f.watts = 60.0
        time.sleep(0.2)
        elapsed = time.monotonic() - t0
        e = s.energy()
    # 20 W for ~0.2 s then 60 W: between the all-20 W and all-60 W bounds
    assert 20.0 * elapsed * 0.9 < e < 60.0 * elapsed
    assert e == pytest.approx(20 * 0.2 + 60 * 0.2, rel=0.15)


def test_series_gives_windowed_power_per_sample() -> None:
    f = FakeMeter(watts=10.0)
    with Sampler(f, period=0.002) as s:
        time.sleep(0.1)
        after = time.monotonic()
        f.watts = 90.0
        time.sleep(0.1)
        t, w = s.series(after, window=0.02)
    assert len(t) > 10 and t == sorted(t) and t[0] > after
    assert w[-1] == pytest.approx(90.0, rel=0.05)
    assert min(w) < 60.0  # the first windows still hold the 10 W stretch


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"period": 0}, ValueError, "period"),
        ({"period": -1.0}, ValueError, "period"),
        ({"period": math.nan}, ValueError, "period"),
        ({"period": "fast"}, TypeError, "period"),
        ({"history": 0}, ValueError, "history"),
    ],
)
def test_bad_sampler_arguments(kwargs: dict[str, object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        Sampler(FakeMeter(), **kwargs)  # type: ignore[arg-type]


def test_bad_windows_and_domains() -> None:
    with Sampler(FakeMeter(), period=0.01) as s:
        with pytest.raises(ValueError, match="window"):
            s.power(window=0)
        with pytest.raises(ValueError, match="window"):
            s.power(window=-0.5)
        with pytest.raises(ValueError, match="history"):
            s.power(window=60.0)  # the ring holds ~10 s
        with pytest.raises(ValueError, match="unknown domain 'dram-0'"):
            s.power(window=0.1, domain="dram-0")
        with pytest.raises(TypeError, match="meter"):
            Sampler("auto")  # type: ignore[arg-type]


def test_sampler_not_running_says_so() -> None:
    s = Sampler(FakeMeter())
    with pytest.raises(NrgError, match="not running"):
        s.power()
    with pytest.raises(NrgError, match="not running"):
        s.energy()


def test_handles_share_one_thread_started_by_first_and_stopped_by_last() -> None:
    f = FakeMeter(watts=5.0)
    before = _threads()
    a, b = Sampler(f, period=0.001), Sampler(f, period=0.001)
    with a:
        assert _threads() == before + 1
        with b:
            assert len(sampler._cores) == 1
            assert _threads() == before + 1
        assert len(sampler._cores) == 1  # a still uses it
    assert not sampler._cores
    assert _settled_threads(before) == before


def test_thread_stops_on_exception() -> None:
    before = _threads()
    with pytest.raises(RuntimeError), Sampler(FakeMeter(), period=0.001):
        raise RuntimeError("boom")
    assert _settled_threads(before) == before and not sampler._cores


def test_forked_child_gets_its_own_sampler_thread() -> None:
    f = FakeMeter(watts=25.0)
    with Sampler(f, period=0.001) as s:
        time.sleep(0.05)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the parent's thread does not exist here
            try:
                n0 = s.samples
                f.watts = 75.0
                time.sleep(0.2)
                ok = s.samples > n0 + 50 and abs(s.power(0.1) - 75.0) < 3.0
                os.write(w, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(w)
        result = os.read(r, 1)
        os.waitpid(pid, 0)
        os.close(r)
        time.sleep(0.05)
        assert s.power(0.1) == pytest.approx(25.0, rel=0.05)  # the parent is untouched
    assert result == b"1"
