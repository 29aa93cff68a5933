"""A stale meter in a loop's report: the seconds of unknown power and the
iterations that ran degraded meanwhile, never "full speed" or "too short"."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from nrgloops import EnergyBudget, Knob, PowerCap, Report, nrg_adapt, perforate, truncate
from nrgloops._fakes import powercap_tree as pt
from nrgloops.meters import Meter
from nrgloops.meters.powercap import open_powercap


def _meter(tmp_path: Path) -> tuple[Meter, Callable[[], None]]:
    """A powercap meter on a fake tree, and what makes every read fail."""
    tree = pt.PowercapTree(tmp_path)
    tree.add_zone("intel-rapl:0", "package-0", 1_000_000)
    energy = tree.paths["intel-rapl:0"] / "energy_uj"
    return open_powercap(tree.root), lambda: energy.write_text("garbage\n")


def _run(call: Callable[[], object], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        call()
        time.sleep(0.0005)


def _break_after_first(loop: Iterable[int], break_it: Callable[[], None], seconds: float) -> None:
    """Iterate ``loop``, making the meter fail after the first item, for ``seconds``."""
    end = None
    for i in loop:
        if i == 0:
            break_it()
            end = time.monotonic() + seconds
        time.sleep(0.0005)
        assert end is not None
        if time.monotonic() > end:
            break


def _check_stale(r: Report, degraded: int) -> None:
    # the sampler says stale after 5 failed reads and 20 ms: most of the 0.15 s
    assert 0.05 < r.stale_s <= r.duration_s
    assert 0 < r.stale_iterations <= degraded
    assert r.cap_bound is None  # it did not run at full speed all along
    text = str(r)
    assert "power unknown (meter stale) for" in text and "ran degraded" in text
    assert "never bound" not in text and "shorter than" not in text
    back = Report.from_json(r.to_json())
    assert (back.stale_s, back.stale_iterations) == (r.stale_s, r.stale_iterations)


def test_an_adapted_function_reports_its_stale_time(tmp_path: Path) -> None:
    meter, break_it = _meter(tmp_path)
    f = nrg_adapt(PowerCap(50, meter=meter))(lambda: "full")
    f.alternate(lambda: "alt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "unknown": tested elsewhere
        f()
        break_it()
        _run(f, 0.15)
        assert f() == "alt"
        f.close()
    _check_stale(f.report, f.report.iterations["alternate"] or 0)


def test_a_knob_loop_reports_its_stale_time(tmp_path: Path) -> None:
    meter, break_it = _meter(tmp_path)
    knob = Knob(1, 4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with nrg_adapt(PowerCap(50, meter=meter), knob=knob) as loop:
            loop.step()
            break_it()
            _run(loop.step, 0.15)
            snapshot = loop.report  # a running loop's snapshot counts the open stretch
            assert snapshot.stale_s > 0.05 and snapshot.cap_bound is None
    r = loop.report
    assert knob.value == 1 and r.stale_s >= snapshot.stale_s
    its = sum(n or 0 for n in r.iterations.values())  # adapt + over_cap_at_bottom
    assert 0 < r.stale_iterations <= its  # all at the bottom
    assert r.cap_bound is None and "power unknown (meter stale)" in str(r)


def test_a_perforated_loop_counts_its_stale_skips(tmp_path: Path) -> None:
    meter, break_it = _meter(tmp_path)
    loop = perforate(range(10**9), PowerCap(50, meter=meter), rate=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _break_after_first(loop, break_it, 0.15)
    r = loop.report
    assert 0.05 < r.stale_s <= r.duration_s
    assert 0 < r.stale_iterations <= (r.iterations["skipped"] or 0)
    assert "power unknown (meter stale)" in str(r)


def test_a_truncated_loop_warns_once_that_its_budget_cannot_end_it(tmp_path: Path) -> None:
    meter, break_it = _meter(tmp_path)
    loop = truncate(range(10**9), EnergyBudget(1e6, meter=meter))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _break_after_first(loop, break_it, 0.15)
    unknown = [w for w in seen if "power is unknown" in str(w.message)]
    assert len(unknown) == 1 and "budget cannot end it" in str(unknown[0].message)
    assert unknown[0].filename == __file__  # points at the user's for loop
    assert 0.05 < loop.report.stale_s <= loop.report.duration_s


def test_a_loop_with_a_good_meter_has_no_stale_time(tmp_path: Path) -> None:
    meter, _ = _meter(tmp_path)
    f = nrg_adapt(PowerCap(50, meter=meter))(lambda: "full")
    f.alternate(lambda: "alt")
    _run(f, 0.1)
    f.close()
    r = f.report
    assert (r.stale_s, r.stale_iterations) == (0.0, 0)
    assert "meter stale" not in str(r) and math.isfinite(r.energy_j)
    with pytest.raises(AssertionError):
        _check_stale(r, 0)
