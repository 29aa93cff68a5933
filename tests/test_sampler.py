"""The C sampler through its Python handle, driven by FakeMeter."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nrgloops import NrgError, Sampler, sampler
from nrgloops._fakes import powercap_tree as pt
from nrgloops._ffi import lib
from nrgloops.meters.powercap import open_powercap
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
        t_step = time.monotonic()
        f.watts = 60.0
        time.sleep(0.2)
        e = s.energy()
        elapsed = time.monotonic() - t0
    # 20 W until the step, 60 W after it (the sleeps may run long on a busy
    # machine: take the times measured, up to one 1 ms sample at each end)
    want = 20.0 * (t_step - t0) + 60.0 * (elapsed - (t_step - t0))
    assert e == pytest.approx(want, rel=0.05, abs=0.2)


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
            # the child's energy keeps rising with its own CPU time (10 J per
            # CPU second), however much CPU a loaded machine leaves it
            e0, c0 = s.energy(), time.process_time()
            _spin(0.3)
            time.sleep(0.03)  # the thread's next samples
            cpu, e = time.process_time() - c0, s.energy() - e0
            return cpu > 0.01 and 0.7 * 10 * cpu < e < 1.3 * 10 * cpu + 0.3

        assert _in_child(child)


# -- lifetime under concurrency ------------------------------------------------


def test_stop_while_other_threads_read_is_safe() -> None:
    """Readers on other threads of the same handle while it is stopped and
    started again: they get numbers, NaN or "not running", never freed memory
    (run in a child process: a crash would be a signal there, not here)."""
    code = """
import gc, math, threading, time
from nrgloops import NrgError, Sampler
from nrgloops._ffi import ffi, lib
from nrgloops.testing import FakeMeter
s = Sampler(FakeMeter(watts=30.0), period=0.001)
# what truncate's hot loop does: keep the C pointer across many reads
s.start(); time.sleep(0.02); ptr = s._ptr(); s.stop(); gc.collect()
assert lib.nrg_sampler_energy(ptr, -1) > 0
t, w = ffi.new("double[]", 20000), ffi.new("double[]", 20000)
assert lib.nrg_sampler_series(ptr, -math.inf, 0.005, -1, t, w, 20000) > 0
del ptr
done = False
def read():
    while not done:
        try:
            s.power(0.01); s.energy(); s.power(0.02, "package-0")
            s.series(-math.inf, 0.001)
        except NrgError:
            pass
threads = [threading.Thread(target=read) for _ in range(3)]
for t in threads:
    t.start()
for _ in range(150):
    s.start(); s.watch(0.01); time.sleep(0.001); s.stop()
done = True
for t in threads:
    t.join()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


def test_published_view_outlives_stop() -> None:
    s = Sampler(FakeMeter(watts=20.0), period=0.001).start()
    slot = s.watch(0.05)
    pub = s.published
    time.sleep(0.1)
    assert pub[slot] == pytest.approx(20.0, rel=0.05)
    s.stop()
    gc.collect()
    assert math.isnan(pub[slot])  # valid memory, and "unknown": the slot was given back
    with pytest.raises(NrgError, match="not running"):
        s.power(0.05)


def test_dropped_started_sampler_releases_its_thread() -> None:
    before = _threads()
    s = Sampler(FakeMeter(), period=0.001).start()
    assert _threads() == before + 1
    del s
    gc.collect()
    assert _settled_threads(before) == before and not sampler._cores


def test_fork_while_a_thread_reads_the_meter() -> None:
    """fork() copies a lock held by another thread as held: the child's read
    must not wait for a thread that does not exist there."""
    f = FakeMeter(watts=5.0)
    with f._read_lock:  # another thread inside meter.read() at fork time
        pid = os.fork()
        if pid == 0:
            try:
                f.read()
            finally:
                os._exit(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child's first meter.read() hung on the lock copied by fork()")


# -- slots ---------------------------------------------------------------------


def test_many_distinct_windows_never_use_up_the_slots() -> None:
    f = FakeMeter(watts=40.0)
    with Sampler(f, period=0.001) as s:
        time.sleep(0.15)
        windows = [0.01 + 0.001 * i for i in range(2 * lib.NRG_MAX_SLOTS)]
        for w in windows:  # more distinct windows than slots: computed, no error
            assert s.power(w) == pytest.approx(40.0, rel=0.05)
        with Sampler(f, period=0.001) as loop:  # a loop can still watch one
            slot = loop.watch(0.123)
            time.sleep(0.01)
            assert loop.published[slot] == pytest.approx(40.0, rel=0.05)


def test_slots_are_given_back_at_stop() -> None:
    f = FakeMeter(watts=10.0)
    with Sampler(f, period=0.001) as keep:  # keeps one core alive throughout
        keep.watch(0.5)
        time.sleep(0.05)  # some history (before the second sample the power is 0 W)
        for i in range(3 * lib.NRG_MAX_SLOTS):  # each handle one window, then stops
            with Sampler(f, period=0.001) as s:
                s.watch(0.01 + 0.001 * i)
        handles = [Sampler(f, period=0.001).start() for _ in range(lib.NRG_MAX_SLOTS)]
        try:
            for i, h in enumerate(handles[:-1]):
                h.watch(0.2 + 0.001 * i)  # with keep's: every slot taken
            with pytest.raises(NrgError, match="distinct .window, domain."):
                handles[-1].watch(0.9)
            assert handles[-1].power(0.9) == pytest.approx(10.0, rel=0.1)  # computed
            assert handles[0].watch(0.2) == handles[1].watch(0.2)  # equal windows share
        finally:
            for h in handles:
                h.stop()
        with Sampler(f, period=0.001) as s:
            s.watch(0.9)  # free again


# -- stale power -----------------------------------------------------------------


def test_failing_reads_make_the_power_stale_then_recover(tmp_path: Path) -> None:
    tree = pt.PowercapTree(tmp_path)
    tree.add_zone("intel-rapl:0", "package-0", 1_000_000)
    m = open_powercap(tree.root)
    energy = tree.paths["intel-rapl:0"] / "energy_uj"
    with Sampler(m, period=0.002) as s:
        slot = s.watch(0.05)
        time.sleep(0.05)
        assert not s.stale and math.isfinite(s.power(0.05))
        good = s.energy()
        energy.write_text("not a number\n")  # every read fails from now on
        deadline = time.monotonic() + 5
        while not s.stale and time.monotonic() < deadline:
            time.sleep(0.005)
        assert s.stale
        assert math.isnan(s.power(0.05)) and math.isnan(s.published[slot])
        assert math.isnan(s.power(0.07))  # a window not published: NaN too
        assert not s.power(0.05) <= 100.0  # what a loop's cap check sees: not "under"
        assert s.energy() == good  # the last good total
        assert s.errors > 0
        tree.set_raw("intel-rapl:0", tree.raw["intel-rapl:0"] + 100)  # reads work again
        while s.stale and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not s.stale and math.isfinite(s.published[slot])


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda s: s.power(window=10**400), ValueError, "window"),
        (lambda s: s.power(window=[0.1]), TypeError, "window"),
        (lambda s: s.power(window=0.1, domain=["package-0"]), TypeError, "domain"),
        (lambda s: s.watch(window={}), TypeError, "window"),
        (lambda s: s.series(0.0, 0.1, max_points=10**30), ValueError, "max_points"),
        (lambda s: s.series(0.0, 0.1, max_points=True), TypeError, "max_points"),
        (lambda s: s.series("now", 0.1), TypeError, "after"),
    ],
)
def test_bad_input_names_the_argument(
    call: Callable[[Sampler], object], exc: type, word: str
) -> None:
    with Sampler(FakeMeter(), period=0.01) as s, pytest.raises(exc, match=word):
        call(s)


def test_huge_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="period"):
        Sampler(FakeMeter(), period=10**400)
    with pytest.raises(ValueError, match="history"):
        Sampler(FakeMeter(), history=10**400)
    with Sampler(FakeMeter(), period=0.001) as s:
        time.sleep(0.02)
        t, _ = s.series(0.0, 0.01, max_points=10**9)  # no more than the ring holds
        assert 0 < len(t) <= sampler._cores[(id(s.meter), 0.001, 10.0)].capacity
        assert len(s.series(-(10**400), 0.01)[0]) > 0  # a huge int: before every row
        assert s.series(10**400, 0.01) == ([], [])
