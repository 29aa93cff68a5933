"""Knob policies, driven by a simulated plant (no sampler, simulated time)."""

from __future__ import annotations

import math
from collections import deque

import pytest

from nrgloops.control import GRID_POLICIES, POLICIES, Knob
from nrgloops.testing import FakeClock, Sample, SimulatedPlant


def simulate(
    knob: Knob,
    cap: float,
    watts: object = lambda v: 10.0 + 5.0 * v,
    window: float = 0.1,
    seconds: float = 20.0,
    dt: float = 0.005,
    t0: float = 0.0,
) -> list[tuple[float, float, float]]:
    """Run the knob against power = watts(value), averaged over `window`
    like the sampler does; returns (t, windowed power, value) per step."""
    hist: deque[tuple[float, float]] = deque()
    energy = 0.0
    out = []
    t = t0
    hist.append((t0, 0.0))
    while t < t0 + seconds:
        t += dt
        energy += watts(knob.value) * dt  # type: ignore[operator]
        hist.append((t, energy))
        while len(hist) > 2 and hist[1][0] <= t - window:
            hist.popleft()
        ts, e0 = hist[0]
        power = (energy - e0) / (t - ts)
        knob.update(power, cap, t, window)
        out.append((t, power, float(knob.value)))
    return out


# -- bad input ---------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lo": 5, "hi": 1, "step": 1}, "lo must be <= hi"),
        ({"lo": 0, "hi": 4, "step": 0}, "step must be > 0"),
        ({"lo": 0, "hi": 4, "step": -1}, "step must be > 0"),
        ({"lo": 0, "hi": 4, "step": 1, "policy": "magic"}, "policy must be one of"),
        ({"lo": 0, "hi": 4, "step": 1, "band": 1.0}, r"band .* \[0, 1\)"),
        ({"lo": 0, "hi": 4, "step": 1, "band": -0.1}, r"band .* \[0, 1\)"),
        ({"lo": 0, "hi": 4, "step": 1, "dwell": -1}, "dwell must be"),
        ({"lo": 0, "hi": 4, "step": 1, "start": 9}, r"start must be in \[lo, hi\]"),
        (
            {"lo": 0, "hi": 4, "step": 1, "factor": 1.0},
            r"factor must be a finite number in \(0, 1\)",
        ),
        ({"lo": math.nan, "hi": 4, "step": 1}, "lo must be a finite number"),
        ({"lo": 0, "hi": math.inf, "step": 1}, "hi must be a finite number"),
    ],
)
def test_bad_input_raises_value_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Knob(**kwargs)  # type: ignore[arg-type]


def test_bad_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="lo must be a number"):
        Knob("0", 4, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step must be a number"):
        Knob(0, 4, True)


# -- levels --------------------------------------------------------------------
def test_value_is_int_for_int_arguments_else_float() -> None:
    k = Knob(2, 16, 2)
    assert k.value == 16 and isinstance(k.value, int)
    assert k.levels == 8
    f = Knob(0.5, 2.0, 0.5, start=1.0)
    assert f.value == 1.0 and isinstance(f.value, float)


def test_set_snaps_to_the_grid_and_clamps() -> None:
    k = Knob(2, 16, 2)
    k.set(7.2)
    assert k.value == 8
    k.set(100)
    assert k.value == 16
    k.set(-5)
    assert k.value == 2


def test_hi_off_the_grid_stays_inside_the_range() -> None:
    with pytest.warns(UserWarning, match=r"top level is 9, not 10 \(4 levels: 0, 3, \.\.\., 9\)"):
        k = Knob(0, 10, 3)
    assert k.value == 9 and k.top == 9 and k.levels == 4  # the top level on the grid of 3


def test_the_readme_knob_says_it_tops_out_at_15() -> None:
    with pytest.warns(UserWarning, match="top level is 15, not 16"):
        k = Knob(1, 16, 2)
    assert k.top == k.value == 15 and k.levels == 8
    assert "hi=15" in repr(k)


def test_a_knob_on_the_grid_does_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for args in [(2, 16, 2), (0.0, 1.0, 0.01), (0, 1, 0.1), (3, 3, 1), (0.5, 2.0, 0.5)]:
            assert Knob(*args).top == pytest.approx(args[1])


@pytest.mark.parametrize("backoff", ["no", 0, 1, None, "False"])
def test_backoff_must_be_a_bool(backoff: object) -> None:
    with pytest.raises(TypeError, match="backoff must be True or False"):
        Knob(0, 4, 1, policy="step", backoff=backoff)  # type: ignore[arg-type]
    assert Knob(0, 4, 1, policy="step", backoff=False).backoff is False


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((math.nan, 10, 0.0), ValueError, "power must be a finite number of watts >= 0"),
        ((math.inf, 10, 0.0), ValueError, "power must be"),
        ((-1, 10, 0.0), ValueError, "power must be a finite number of watts >= 0"),
        (("x", 5, 0.0), TypeError, "power must be .* not str"),
        ((True, 5, 0.0), TypeError, "power must be .* not bool"),
        ((50, -5, 0.0), ValueError, "cap must be a finite number of watts > 0"),
        ((50, 0, 0.0), ValueError, "cap must be"),
        ((50, math.nan, 0.0), ValueError, "cap must be"),
        ((50, None, 0.0), TypeError, "cap must be .* not NoneType"),
        ((20, 5, math.nan), ValueError, "now must be a finite number of seconds"),
        ((20, 5, math.inf), ValueError, "now must be a finite number of seconds"),
        ((20, 5, "0"), TypeError, "now must be .* not str"),
        ((20, 5, 0.0, -1.0), ValueError, "dwell must be a finite number of seconds >= 0"),
        ((20, 5, 0.0, math.nan), ValueError, "dwell must be"),
    ],
)
def test_update_checks_its_arguments(args: tuple[object, ...], error: type, match: str) -> None:
    k = Knob(0, 4, 1, start=2, dwell=0, policy="step")
    with pytest.raises(error, match=match):
        k.update(*args)  # type: ignore[arg-type]
    assert k.value == 2 and k.moves == 0  # a refused update moves nothing


# -- one step of each policy ---------------------------------------------------
def test_step_policy_moves_one_step_and_holds_in_the_band() -> None:
    k = Knob(0, 10, 2, start=6, band=0.1, dwell=0.0, policy="step")
    assert k.update(power=60, cap=50, now=0.0)  # over: down
    assert k.value == 4
    assert not k.update(power=47, cap=50, now=1.0)  # in [45, 50]: hold
    assert k.value == 4
    assert k.update(power=40, cap=50, now=2.0)  # under the band: up
    assert k.value == 6
    assert k.moves == 2 and k.reversals == 1


def test_dwell_spaces_the_moves() -> None:
    k = Knob(0, 10, 1, dwell=0.5, policy="step")
    assert k.update(100, 50, now=0.0)
    assert not k.update(100, 50, now=0.2)  # too soon
    assert k.update(100, 50, now=0.6)
    assert k.value == 8


def test_dwell_defaults_to_the_one_the_loop_passes() -> None:
    k = Knob(0, 10, 1, policy="step")
    assert k.update(100, 50, now=0.0, dwell=0.3)
    assert not k.update(100, 50, now=0.2, dwell=0.3)
    assert k.update(100, 50, now=0.31, dwell=0.3)


def test_aimd_halves_the_distance_to_lo() -> None:
    k = Knob(0, 16, 1, policy="aimd", dwell=0.0)
    k.update(100, 50, now=0.0)
    assert k.value == 8
    k.update(100, 50, now=1.0)
    assert k.value == 4
    k.update(10, 50, now=2.0)
    assert k.value == 5  # additive increase


def test_pi_moves_further_for_a_larger_error() -> None:
    small, large = Knob(0, 16, 1, policy="pi", dwell=0.0), Knob(0, 16, 1, policy="pi", dwell=0.0)
    small.update(55, 50, now=0.1)
    large.update(100, 50, now=0.1)
    assert large.value < small.value < 16


def test_never_up_while_over_never_down_while_under() -> None:
    for policy in POLICIES:
        k = Knob(0, 16, 1, start=8, policy=policy, dwell=0.0)
        k.update(51, 50, now=0.1)
        assert k.value <= 8
        k2 = Knob(0, 16, 1, start=8, policy=policy, dwell=0.0)
        k2.update(10, 50, now=0.1)
        assert k2.value >= 8


# -- closed loop on the simulated plant -------------------------------------------
@pytest.mark.parametrize("policy", GRID_POLICIES)
def test_settles_under_the_cap_without_chatter(policy: str) -> None:
    # power = 10 + 5 * level; cap 48 W with a 5% band is [45.6, 48]: no level
    # lands in it (level 7 = 45 W under it, level 8 = 50 W over the cap).
    knob = Knob(0, 16, 1, policy=policy)
    trace = simulate(knob, cap=48.0, seconds=20.0)
    late = [p for t, p, v in trace if t > 10.0]
    assert 10.0 + 5.0 * knob.value <= 48.0
    assert sum(late) / len(late) <= 48.0
    # 20 s at a 0.1 s dwell: a bare ramp reverses ~100 times; the ceiling's
    # tripling hold leaves a handful of probes.
    assert knob.reversals <= 12, knob


@pytest.mark.parametrize("policy", GRID_POLICIES)
def test_settles_in_the_band_and_stays(policy: str) -> None:
    # cap 52 W, band [49.4, 52]: level 8 = 50 W lies in it.
    knob = Knob(0, 16, 1, policy=policy)
    simulate(knob, cap=52.0, seconds=10.0)
    assert knob.value == 8
    assert knob.reversals <= 2, knob


def test_bare_ramp_chatters_where_the_band_and_dwell_do_not() -> None:
    bare = Knob(0, 16, 1, policy="step", band=0.0, dwell=0.0, backoff=False)
    simulate(bare, cap=48.0, seconds=5.0)
    settled = Knob(0, 16, 1, policy="step")
    simulate(settled, cap=48.0, seconds=5.0)
    assert bare.reversals > 5 * max(settled.reversals, 1)


@pytest.mark.parametrize("policy", POLICIES)
def test_finds_a_higher_level_when_the_workload_gets_lighter(policy: str) -> None:
    knob = Knob(0, 16, 1, policy=policy)
    heavy = {"on": True}

    def watts(v: float) -> float:
        return (10.0 + 5.0 * v) if heavy["on"] else (5.0 + 2.0 * v)

    simulate(knob, cap=48.0, watts=watts, seconds=10.0)
    assert knob.level < 8
    heavy["on"] = False  # now level 16 is 37 W: every level fits
    simulate(knob, cap=48.0, watts=watts, seconds=40.0, t0=10.0)
    assert knob.value == 16


def test_backoff_hold_is_bounded_by_max_hold() -> None:
    knob = Knob(0, 16, 1, policy="step", max_hold=0.5)
    simulate(knob, cap=48.0, seconds=20.0)
    # with a short hold the probes keep coming, but never while over
    assert knob.reversals > 12
    assert knob._hold <= 0.5


# -- the mixed level, on a simulated plant in simulated time ------------------------
def drive(knob: Knob, power: object, cap: object, seconds: float, **plant: object) -> list[Sample]:
    stale = plant.pop("stale", ())
    p = SimulatedPlant(power, clock=FakeClock(), **plant)  # type: ignore[arg-type]
    return p.drive(knob, cap, seconds, stale=stale)  # type: ignore[arg-type]


def mean_power(trace: list[Sample], after: float, before: float = math.inf) -> float:
    """Average power between two times of a trace, W (from its energy)."""
    pts = [s for s in trace if after <= s.t <= before]
    return (pts[-1].energy_j - pts[0].energy_j) / (pts[-1].t - pts[0].t)


THREADS = [13.0, 20.0]  # the example: 1 thread 13 W, 2 threads 20 W


@pytest.mark.parametrize("cap", [15.0, 18.0])
def test_mix_holds_a_cap_between_two_levels(cap: float) -> None:
    knob = Knob(1, 2, 1)
    assert knob.policy == "mix"  # the default
    trace = drive(knob, THREADS, cap, 6.0, lo=1)
    got = mean_power(trace, after=1.0)
    assert cap * 0.98 <= got <= cap  # the step policy sits at 13 W
    assert knob.level == pytest.approx(1 + (cap * 0.99 - 13.0) / 7.0, abs=0.03)
    assert knob.predict(1) == pytest.approx(13.0, rel=0.01)
    assert knob.predict(2) == pytest.approx(20.0, rel=0.01)
    assert knob.reversals <= 3


def test_the_step_policy_leaves_the_cap_unused_where_mix_does_not() -> None:
    step, mix = Knob(1, 2, 1, policy="step"), Knob(1, 2, 1)
    got = {k.policy: mean_power(drive(k, THREADS, 18.0, 6.0, lo=1), after=1.0) for k in (step, mix)}
    assert got["step"] == pytest.approx(13.0, rel=0.03)  # (and its probes of 20 W)
    assert got["mix"] > 17.6


def test_mix_spreads_the_two_levels_evenly_in_time() -> None:
    knob = Knob(1, 2, 1)
    plant = SimulatedPlant(THREADS, lo=1, clock=FakeClock())
    trace = plant.drive(knob, 16.5, 4.0, record_s=0.001)  # a sample per iteration
    late = [s.value for s in trace if s.t > 2.0]
    ups = [i for i, v in enumerate(late) if v == 2]
    assert len(ups) / len(late) == pytest.approx(knob.level - 1, abs=0.01)
    # 2 ms ticks: the upper level for 2 or 4 ms at a time, never longer
    assert max(b - a for a, b in zip(ups, ups[1:], strict=False)) <= 5


def test_mix_follows_a_cap_change_within_a_few_windows() -> None:
    knob = Knob(2, 16, 2)
    trace = drive(knob, lambda t: 8.0 + 3.0 * t, lambda s: 41.0 if s < 3.0 else 25.0, 6.0)
    assert mean_power(trace, 1.0, 3.0) == pytest.approx(41.0 * 0.99, rel=0.01)
    assert mean_power(trace, 3.3, 6.0) == pytest.approx(25.0 * 0.99, rel=0.01)


def test_mix_follows_a_phase_change() -> None:
    knob = Knob(2, 16, 2)
    trace = drive(knob, lambda t: 8.0 + 3.0 * t, 41.0, 8.0, phases=[(4.0, 1.3)], noise=0.02)
    assert mean_power(trace, 1.0, 4.0) == pytest.approx(41.0 * 0.99, rel=0.015)
    assert mean_power(trace, 4.5, 8.0) == pytest.approx(41.0 * 0.99, rel=0.015)
    assert knob.model.phases >= 1
    assert knob.predict(16) == pytest.approx(1.3 * 56.0, rel=0.05)


def test_an_unreachable_cap_runs_the_bottom_warns_once_and_says_by_how_much() -> None:
    knob = Knob(1, 2, 1)
    with pytest.warns(RuntimeWarning, match="cap 10 W is not reachable") as caught:
        trace = drive(knob, THREADS, 10.0, 3.0, lo=1)
    assert len([w for w in caught if "not reachable" in str(w.message)]) == 1
    assert knob.level == 1.0 and mean_power(trace, after=1.0) == pytest.approx(13.0)
    assert knob.unreachable_w == pytest.approx(3.0, rel=0.01)
    assert knob.state()["unreachable_w"] == knob.unreachable_w
    # no windup: a reachable cap later is held at once
    trace = drive(knob, THREADS, 18.0, 2.0, lo=1)
    assert mean_power(trace, after=0.5) == pytest.approx(18.0 * 0.99, rel=0.01)


@pytest.mark.parametrize("policy", POLICIES)
def test_unreachable_is_judged_on_windows_wholly_at_the_bottom(policy: str) -> None:
    # with a lag, the windows after a move down (or a probe up) still hold
    # the level above: they overstated the shortfall (3.67 W, not 3)
    knob = Knob(1, 2, 1, policy=policy)
    with pytest.warns(RuntimeWarning, match="not reachable"):
        drive(knob, THREADS, 10.0, 10.0, lo=1, lag_s=0.01)
    assert knob.unreachable_w == pytest.approx(3.0, rel=0.005)


@pytest.mark.parametrize("policy", POLICIES)
def test_raising_an_unreachable_cap_clears_it(policy: str) -> None:
    knob = Knob(1, 2, 1, policy=policy)
    with pytest.warns(RuntimeWarning, match="not reachable"):
        drive(knob, THREADS, lambda t: 10.0 if t < 3.0 else 17.0, 3.5, lo=1)
    assert knob.unreachable_w is None and knob.state()["unreachable_w"] is None


def test_a_cap_over_the_top_never_binds() -> None:
    for policy in POLICIES:
        knob = Knob(1, 2, 1, policy=policy)
        drive(knob, THREADS, 30.0, 2.0, lo=1)
        assert knob.value == 2 and knob.level == 2 and knob.moves == 0
        assert knob.bound is False and knob.unreachable_w is None


def test_state_and_predict() -> None:
    knob = Knob(2, 16, 2)
    assert math.isnan(knob.predict(16)) and math.isnan(knob.state()["demand_w"])
    drive(knob, lambda t: 8.0 + 3.0 * t, 41.0, 3.0)
    st = knob.state()
    for key in ("value", "level", "lo", "hi", "top", "step", "policy", "moves", "reversals"):
        assert key in st
    assert st["policy"] == "mix" and st["lo"] == 2 and st["top"] == 16
    assert st["level"] == knob.level and 10.0 < knob.level < 12.0
    assert st["demand_w"] == pytest.approx(56.0, rel=0.01) == knob.predict(16)
    assert knob.predict(9) == pytest.approx(35.0, rel=0.02)  # between two grid levels
    assert len(st["model_w"]) == knob.levels
    with pytest.raises(TypeError, match="level must be a number"):
        knob.predict("16")  # type: ignore[arg-type]


def test_a_stale_power_sends_the_knob_to_the_bottom_and_warns_once() -> None:
    for policy in POLICIES:
        knob = Knob(2, 16, 2, policy=policy)
        with pytest.warns(RuntimeWarning, match="windowed power is unknown") as caught:
            trace = drive(knob, lambda t: 8.0 + 3.0 * t, 41.0, 4.0, stale=[(2.0, 2.5)])
        assert len([w for w in caught if "unknown" in str(w.message)]) == 1
        during = [s for s in trace if 2.05 < s.t < 2.5]
        assert all(s.value == 2 for s in during), policy
        assert knob.stale > 0
        assert all(math.isfinite(p) for p in knob.model.p if p == p)
        assert all(math.isfinite(v) for v in knob.model.v if v != math.inf)
        if policy == "mix":  # and it resumes where it was
            assert mean_power(trace, 3.0) == pytest.approx(41.0 * 0.99, rel=0.01)
        else:
            assert math.isfinite(knob._integral)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"margin": 0.5}, r"margin must be .* in \[0, 0.5\)"),
        ({"margin": -0.1}, "margin must be"),
        ({"noise": 0.0}, r"noise must be .* in \(0, 1\)"),
        ({"drift": 1.0}, r"drift must be .* in \[0, 1\)"),
        ({"phase": 0.0}, r"phase must be .* in \(0, 1\)"),
        ({"phase": math.nan}, "phase must be"),
    ],
)
def test_bad_model_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Knob(0, 4, 1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be"):
        Knob(0, 4, 1, **{next(iter(kwargs)): "x"})  # type: ignore[arg-type]


def test_policy_must_be_a_string_of_the_list() -> None:
    for bad in ("magic", None, 3):
        with pytest.raises(ValueError, match="policy must be one of mix, step, aimd, pi"):
            Knob(0, 4, 1, policy=bad)  # type: ignore[arg-type]


def test_update_window_is_checked() -> None:
    k = Knob(0, 4, 1)
    with pytest.raises(ValueError, match="window must be a finite number of seconds > 0"):
        k.update(10.0, 20.0, 0.0, window=0.0)
    with pytest.raises(TypeError, match="window must be a number of seconds"):
        k.update(10.0, 20.0, 0.0, window="0.1")  # type: ignore[arg-type]


def test_update_drives_a_mix_from_your_own_measurements() -> None:
    knob = Knob(1, 2, 1, dwell=0.1)
    watts = {1: 13.0, 2: 20.0}
    shares = []
    t = 0.0
    for _ in range(3000):  # your loop: 1 ms per iteration, the power of the level
        t += 0.001
        knob.update(watts[int(knob.value)], 16.5, t, window=0.001)
        shares.append(knob.value == 2)
    assert 1.3 < knob.level < 1.6
    assert sum(shares[-1000:]) / 1000 == pytest.approx(knob.level - 1, abs=0.05)


def concave(threads: float) -> float:
    return 8.0 + 12.0 * math.sqrt(threads)


def test_mix_on_concave_power_alternates_the_levels_that_do_the_most_work() -> None:
    # power concave in threads, work linear: 2 and 16 threads in turn do more
    # work at 41 W than 6 and 8 threads in turn (the upper hull, as POET)
    knob = Knob(2, 16, 2)
    plant = SimulatedPlant(concave, clock=FakeClock())
    trace = plant.drive(knob, 41.0, 6.0)
    assert mean_power(trace, after=2.0) == pytest.approx(41.0 * 0.99, rel=0.01)
    assert {knob._a, knob._b} == {0, 7}
    late = [s for s in trace if s.t >= 2.0]
    rate = (late[-1].work - late[0].work) / (late[-1].t - late[0].t) / 1000.0  # per iteration
    s = (41.0 * 0.99 - concave(2)) / (concave(16) - concave(2))
    assert rate == pytest.approx((1 - s) * 2 + s * 16, rel=0.02)
    adjacent = 6 + 2 * (41.0 * 0.99 - concave(6)) / (concave(8) - concave(6))
    assert rate > 1.15 * adjacent


def test_work_per_level_steers_the_mix_and_is_checked() -> None:
    # work concave like the power: the adjacent levels are the best again
    knob = Knob(2, 16, 2, work=lambda t: math.sqrt(t))
    SimulatedPlant(concave, clock=FakeClock()).drive(knob, 41.0, 4.0)
    assert knob._b == knob._a + 1
    with pytest.raises(ValueError, match=r"work must give one number per level \(8\), got 2"):
        Knob(2, 16, 2, work=[1.0, 2.0])
    with pytest.raises(TypeError, match="work must be a function of the level, a sequence"):
        Knob(2, 16, 2, work=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"work\[1\] must be a finite number"):
        Knob(0, 1, 1, work=[1.0, math.nan])
    with pytest.raises(TypeError, match=r"work\(2\) must be a number"):
        Knob(2, 16, 2, work=lambda t: "x")  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("policy", GRID_POLICIES)
def test_a_grid_policy_forgets_its_ceiling_when_the_cap_changes(policy: str) -> None:
    knob = Knob(2, 16, 2, policy=policy)
    trace = drive(knob, lambda t: 8.0 + 3.0 * t, lambda s: 41.0 if s < 3.0 else 50.0, 8.0)
    # 41 W: 10 threads (38 W); 50 W: 14 threads (50 W) is the top fit
    assert mean_power(trace, 1.5, 3.0) == pytest.approx(38.0, rel=0.03)
    assert mean_power(trace, 6.0, 8.0) == pytest.approx(50.0, rel=0.03)


# -- settings after the knob is made -------------------------------------------------
def test_settings_are_checked_setters_or_read_only_and_unknown_names_raise() -> None:
    k = Knob(0, 4, 1)
    with pytest.raises(ValueError, match="margin"):
        k.margin = -3
    k.margin = 0.2  # takes effect: the next plan aims at 0.8 of the cap
    for name, value in [("hi", 8), ("lo", 1), ("step", 2), ("policy", "bogus"), ("dwell", 1.0)]:
        with pytest.raises(AttributeError, match=f"Knob.{name} cannot be changed"):
            setattr(k, name, value)
    with pytest.raises(AttributeError):
        k.marign = 0.1  # type: ignore[attr-defined]
    assert k.hi == 4 and k.policy == "mix" and k.margin == 0.2


def test_a_margin_set_at_run_time_takes_effect() -> None:
    knob = Knob(1, 2, 1)
    drive(knob, THREADS, 15.0, 3.0, lo=1)
    knob.margin = 0.1
    trace = drive(knob, THREADS, 15.0, 3.0, lo=1)
    assert mean_power(trace, after=1.0) == pytest.approx(15.0 * 0.9, rel=0.01)


def test_arguments_the_policy_does_not_use_warn_and_negative_work_is_refused() -> None:
    with pytest.warns(UserWarning, match=r"band= is not used by this policy \(only by step"):
        Knob(0, 4, 1, band=0.2)
    with pytest.warns(UserWarning, match=r"margin= is not used .* \(only by mix\)"):
        Knob(0, 4, 1, policy="step", margin=0.1)
    with pytest.raises(ValueError, match=r"work\[1\] must be .*>= 0"):
        Knob(0, 1, 1, work=[1, -2])


def test_warnings_at_ticks_point_at_the_callers_line() -> None:
    knob = Knob(1, 2, 1, policy="step")
    with pytest.warns(RuntimeWarning, match="not reachable") as caught:
        drive(knob, THREADS, 10.0, 3.0, lo=1)
    # drive() is the library's (nrgloops.testing): the first frame outside it is this file
    assert [w.filename for w in caught if "not reachable" in str(w.message)] == [__file__]


@pytest.mark.parametrize("start", [0.0, 8588.769781002, 1e6])
def test_an_unreachable_cap_is_seen_whatever_the_clock_reads(start: float) -> None:
    # a whole window must count as whole however large time.monotonic() has
    # grown (span / window rounds below 1 there: seen after 2 h of uptime)
    plant = SimulatedPlant([13.0, 20.0], lo=1, clock=FakeClock(start))
    knob = Knob(1, 2, 1)
    with pytest.warns(RuntimeWarning, match="not reachable"):
        plant.drive(knob, 10.0, 1.0, window=0.05)
    assert knob.unreachable_w == pytest.approx(3.0, rel=0.05)
