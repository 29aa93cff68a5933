"""The C sampler through its Python handle, driven by FakeMeter."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

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


def _in_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a forked child and return its verdict."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    result = os.read(r, 1)
    os.waitpid(pid, 0)
    os.close(r)
    return result == b"1"


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_forked_child_gets_its_own_sampler_thread() -> None:
    f = FakeMeter(watts=25.0)
    with Sampler(f, period=0.001) as s:
        time.sleep(0.05)

        def child() -> bool:  # the parent's thread does not exist here
            n0 = s.samples
            f.watts = 75.0
            time.sleep(0.2)
            return s.samples > n0 + 50 and abs(s.power(0.1) - 75.0) < 3.0

        assert _in_child(child)
        time.sleep(0.05)
        assert s.power(0.1) == pytest.approx(25.0, rel=0.05)  # the parent is untouched


def test_sampler_thread_takes_no_signal() -> None:
    with Sampler(FakeMeter(), period=0.001):
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "nrg-sampler":
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = next(line for line in f if line.startswith("SigBlk:"))
            # SIGINT (2) and SIGTERM (15) are blocked: bits 1 and 14 of the mask
            mask = int(blocked.split()[1], 16)
            assert mask & (1 << 1) and mask & (1 << 14)
            break
        else:
            pytest.fail("no nrg-sampler thread found")


def test_halted_sampler_keeps_its_ring_readable() -> None:
    f = FakeMeter(watts=12.0)
    s = Sampler(f, period=0.001).start()
    time.sleep(0.15)
    sampler._halt_all()  # what interpreter exit does
    assert _settled_threads(0) == 0
    frozen = s.power(0.1)
    assert frozen == pytest.approx(12.0, rel=0.05)  # stale but valid, not freed memory
    time.sleep(0.02)
    assert s.power(0.1) == frozen and s.energy() > 0
    s.stop()


def test_bad_period_history_and_series_arguments() -> None:
    with pytest.raises(ValueError, match="period must be at least"):
        Sampler(FakeMeter(), period=1e-9)
    with pytest.raises(ValueError, match="history=.*MiB"):
        Sampler(FakeMeter(), period=0.001, history=1e9).start()
    with Sampler(FakeMeter(), period=0.01) as s:
        with pytest.raises(ValueError, match="after"):
            s.series(math.nan, 0.1)
        with pytest.raises(ValueError, match="max_points"):
            s.series(0.0, 0.1, max_points=-1)


def test_process_model_keeps_counting_in_a_forked_child() -> None:
    from nrgloops.meters.model import open_model

    m = open_model(idle_watts=0.0, watts_per_core=10.0, scope="process")
    with Sampler(m, period=0.005) as s:
        _spin(0.3)  # the parent has used CPU time before the fork

        def child() -> bool:
            # one busy core: ~10 W, or less on a loaded machine, where the child
            # gets only a share of a core: compare with that share
            c0, t0 = time.process_time(), time.monotonic()
            _spin(0.3)
            share = (time.process_time() - c0) / (time.monotonic() - t0)
            return s.power(0.2) > 0.5 * 10.0 * share > 0.0

        assert _in_child(child)
