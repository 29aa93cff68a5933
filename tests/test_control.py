"""Knob policies, driven by a simulated plant (no sampler, simulated time)."""

from __future__ import annotations

import math
from collections import deque

import pytest

from nrgloops.control import POLICIES, Knob


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
        ({"lo": 0, "hi": 4, "step": 1, "factor": 1.0}, r"factor must be in \(0, 1\)"),
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
        Knob(0, 4, 1, backoff=backoff)  # type: ignore[arg-type]
    assert Knob(0, 4, 1, backoff=False).backoff is False


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
        ((20, 5, math.nan), ValueError, "now must be a finite time"),
        ((20, 5, math.inf), ValueError, "now must be a finite time"),
        ((20, 5, "0"), TypeError, "now must be .* not str"),
        ((20, 5, 0.0, -1.0), ValueError, "dwell must be a finite number of seconds >= 0"),
        ((20, 5, 0.0, math.nan), ValueError, "dwell must be"),
    ],
)
def test_update_checks_its_arguments(args: tuple[object, ...], error: type, match: str) -> None:
    k = Knob(0, 4, 1, start=2, dwell=0)
    with pytest.raises(error, match=match):
        k.update(*args)  # type: ignore[arg-type]
    assert k.value == 2 and k.moves == 0  # a refused update moves nothing


# -- one step of each policy ---------------------------------------------------
def test_step_policy_moves_one_step_and_holds_in_the_band() -> None:
    k = Knob(0, 10, 2, start=6, band=0.1, dwell=0.0)
    assert k.update(power=60, cap=50, now=0.0)  # over: down
    assert k.value == 4
    assert not k.update(power=47, cap=50, now=1.0)  # in [45, 50]: hold
    assert k.value == 4
    assert k.update(power=40, cap=50, now=2.0)  # under the band: up
    assert k.value == 6
    assert k.moves == 2 and k.reversals == 1


def test_dwell_spaces_the_moves() -> None:
    k = Knob(0, 10, 1, dwell=0.5)
    assert k.update(100, 50, now=0.0)
    assert not k.update(100, 50, now=0.2)  # too soon
    assert k.update(100, 50, now=0.6)
    assert k.value == 8


def test_dwell_defaults_to_the_one_the_loop_passes() -> None:
    k = Knob(0, 10, 1)
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
@pytest.mark.parametrize("policy", POLICIES)
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


@pytest.mark.parametrize("policy", POLICIES)
def test_settles_in_the_band_and_stays(policy: str) -> None:
    # cap 52 W, band [49.4, 52]: level 8 = 50 W lies in it.
    knob = Knob(0, 16, 1, policy=policy)
    simulate(knob, cap=52.0, seconds=10.0)
    assert knob.value == 8
    assert knob.reversals <= 2, knob


def test_bare_ramp_chatters_where_the_band_and_dwell_do_not() -> None:
    bare = Knob(0, 16, 1, band=0.0, dwell=0.0, backoff=False)
    simulate(bare, cap=48.0, seconds=5.0)
    settled = Knob(0, 16, 1)
    simulate(settled, cap=48.0, seconds=5.0)
    assert bare.reversals > 5 * max(settled.reversals, 1)


def test_finds_a_higher_level_when_the_workload_gets_lighter() -> None:
    knob = Knob(0, 16, 1)
    heavy = {"on": True}

    def watts(v: float) -> float:
        return (10.0 + 5.0 * v) if heavy["on"] else (5.0 + 2.0 * v)

    simulate(knob, cap=48.0, watts=watts, seconds=10.0)
    assert knob.value <= 7
    heavy["on"] = False  # now level 16 is 37 W: every level fits
    simulate(knob, cap=48.0, watts=watts, seconds=40.0, t0=10.0)
    assert knob.value == 16


def test_backoff_hold_is_bounded_by_max_hold() -> None:
    knob = Knob(0, 16, 1, max_hold=0.5)
    simulate(knob, cap=48.0, seconds=20.0)
    # with a short hold the probes keep coming, but never while over
    assert knob.reversals > 12
    assert knob._hold <= 0.5
