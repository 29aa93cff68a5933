"""Carbon budgets: truncate holds them, at a constant or a changing intensity;
reports give gCO2eq with the intensity's source and kind; bad input is named."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import time

import pytest

from nrgloops import CarbonBudget, CarbonIntensity, EnergyBudget, Report, truncate
from nrgloops.carbon import J_PER_KWH
from nrgloops.testing import FakeMeter

# 36 W is 0.01 Wh a second: at 1e5 g/kWh, 1 gCO2eq a second (test figures, not a grid's)
WATTS = 36.0
G_PER_KWH = 1e5


def run(budget: CarbonBudget | EnergyBudget, limit_s: float = 10.0) -> Report:
    loop = truncate(itertools.count(), budget)
    end = time.monotonic() + limit_s
    for _ in loop:
        time.sleep(0.001)
        assert time.monotonic() < end, "the budget never stopped the loop"
    return loop.report


def test_constant_intensity_stops_like_the_energy_it_buys() -> None:
    fake = FakeMeter(WATTS)
    budget = CarbonBudget(0.3, intensity=G_PER_KWH, source="test grid", kind="marginal", meter=fake)
    r = run(budget)
    assert r.budget_g == 0.3 and r.budget_j is None
    # stops at the budget: over it by at most the last item (a stalled one on a loaded machine)
    assert r.carbon_g is not None and 0.3 <= r.carbon_g < 0.3 * 1.2
    assert r.carbon_g == pytest.approx(r.energy_j * G_PER_KWH / J_PER_KWH, rel=0.02)
    assert 0.3 * J_PER_KWH / G_PER_KWH <= r.energy_j < 1.2 * 0.3 * J_PER_KWH / G_PER_KWH
    assert r.intensity is not None
    assert r.intensity["source"] == "test grid" and r.intensity["kind"] == "marginal"
    assert r.intensity["mean_g_per_kwh"] == pytest.approx(G_PER_KWH, rel=0.02)
    text = str(r)
    assert "gCO2eq simulated" in text and "marginal intensity from test grid" in text
    assert "budget 0.3 gCO2eq: used" in text


def test_a_rising_intensity_stops_the_loop_sooner() -> None:
    fake = FakeMeter(WATTS)
    t0 = time.time()

    def intensity(t: float) -> float:  # 1 g/s for 0.2 s, then 4 g/s
        return G_PER_KWH if t < t0 + 0.2 else 4 * G_PER_KWH

    r = run(CarbonBudget(0.6, intensity=intensity, meter=fake))
    assert r.carbon_g is not None and 0.6 <= r.carbon_g < 0.6 * 1.2
    # the grams per joule rose: fewer joules than at the first intensity all along
    assert r.energy_j < 0.6 * J_PER_KWH / G_PER_KWH * 0.8
    assert r.intensity is not None and G_PER_KWH < r.intensity["mean_g_per_kwh"] <= 4 * G_PER_KWH
    assert r.intensity["kind"] == "average" and "function of time" in r.intensity["source"]


def test_a_time_series_holds_each_value_until_the_next() -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    series = CarbonIntensity(
        [(now - datetime.timedelta(hours=1), 300.0), (now.timestamp() + 3600, 500.0)],
        source="a forecast",
    )
    assert series.at(now.timestamp()) == 300.0
    assert series.at(now.timestamp() + 7200) == 500.0
    assert series.at(0.0) == 300.0  # before the first point: the first value
    assert series.source == "a forecast" and series.kind == "average"
    fake = FakeMeter(WATTS)
    r = run(CarbonBudget(1e-3, intensity=series, meter=fake))
    assert r.intensity is not None and r.intensity["mean_g_per_kwh"] == pytest.approx(300.0)


def test_reports_round_trip_and_pandas_columns() -> None:
    fake = FakeMeter(WATTS)
    r = run(CarbonBudget(0.05, intensity=G_PER_KWH, meter=fake))
    back = Report.from_json(r.to_json())
    assert back == r
    d = json.loads(r.to_json())
    assert d["carbon_g"] == r.carbon_g and d["intensity"]["kind"] == "average"
    row = r.summary()
    assert row["carbon_g"] == r.carbon_g and row["intensity_source"] == "constant 100000 g/kWh"


def test_the_budget_may_change_at_run_time() -> None:
    fake = FakeMeter(WATTS)
    budget = CarbonBudget(100.0, intensity=G_PER_KWH, meter=fake)
    loop = truncate(itertools.count(), budget)
    t0 = time.monotonic()
    for i in loop:
        time.sleep(0.001)
        if i == 5:
            budget.grams = 0.2  # from the next check on
        assert time.monotonic() - t0 < 10
    g = loop.report.carbon_g
    assert g is not None and 0.2 <= g < 0.2 * 1.25


def test_missing_energy_is_missing_carbon() -> None:
    r = Report(
        kind="truncate",
        iterations={"ran": 1, "skipped": 0, "left": None},
        duration_s=0.0001,
        energy_j=math.nan,
        avg_power_w=math.nan,
        peak_power_w=math.nan,
        over_cap_fraction=None,
        measured=False,
        meter="model",
        window_s=0.1,
        carbon_g=math.nan,
        budget_g=1.0,
        intensity={"source": "x", "kind": "average", "mean_g_per_kwh": math.nan},
    )
    assert "carbon: n/a" in str(r) and "used n/a" in str(r)
    back = Report.from_json(r.to_json())
    assert back.carbon_g is not None and math.isnan(back.carbon_g)


def test_bad_input_is_named() -> None:
    fake = FakeMeter(WATTS)
    for grams, err in ((0, ValueError), (-1, ValueError), (math.inf, ValueError), ("5", TypeError)):
        with pytest.raises(err, match="grams"):
            CarbonBudget(grams, intensity=400.0, meter=fake)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="intensity"):
        CarbonBudget(1.0, intensity=-5.0, meter=fake)
    with pytest.raises(TypeError, match="intensity must be"):
        CarbonBudget(1.0, intensity="400", meter=fake)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        CarbonIntensity([])
    with pytest.raises(ValueError, match=r"intensity\[1\]: the times must increase"):
        CarbonIntensity([(10.0, 1.0), (5.0, 2.0)])
    with pytest.raises(TypeError, match=r"intensity\[0\] must be a \(time, g/kWh\) pair"):
        CarbonIntensity([(1.0,)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="naive"):
        CarbonIntensity([(datetime.datetime(2026, 1, 1), 300.0)])
    with pytest.raises(ValueError, match="kind must be 'average' or 'marginal'"):
        CarbonIntensity(400.0, kind="mean")
    with pytest.raises(TypeError, match="source"):
        CarbonIntensity(400.0, source=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="budget must be"):
        truncate([1], 5.0)  # type: ignore[arg-type]
    bad = CarbonBudget(1.0, intensity=lambda t: math.nan, meter=fake)
    with pytest.raises(ValueError, match="the intensity callable"):
        list(truncate(range(3), bad))
    with pytest.raises(AttributeError, match="cannot be changed"):
        bad.meter = fake  # type: ignore[misc]


def test_a_zero_intensity_runs_at_no_carbon_cost() -> None:
    # 0 g/kWh: the grams left buy unlimited energy, the loop runs to its end
    budget = CarbonBudget(0.8, intensity=0.0, meter=FakeMeter(3600.0))
    loop = truncate(range(3000), budget)
    ran = 0
    for i in loop:
        if i == 0:  # long enough for sampler rows (3000 bare items can take under 1 ms)
            time.sleep(0.05)
        ran += 1
    assert ran == 3000
    assert loop.report.carbon_g == 0.0


def test_an_intensity_series_reaching_zero_runs_at_no_cost_then_charges_again() -> None:
    now = time.time()
    series = [(now - 10.0, 0.0), (now + 0.2, G_PER_KWH)]  # free now, 1 g/s from 0.2 s on
    budget = CarbonBudget(0.2, intensity=series, meter=FakeMeter(WATTS))
    r = run(budget)
    assert r.carbon_g is not None and 0.2 <= r.carbon_g < 0.2 * 1.2
    assert r.duration_s >= 0.2 + 0.2 * 0.9  # the free stretch, then ~0.2 s charged


def test_a_carbon_budget_refuses_unknown_attributes_and_checks_its_intensity() -> None:
    budget = CarbonBudget(1.0, intensity=100.0, meter=FakeMeter(WATTS))
    with pytest.raises(AttributeError):
        budget.gram = 2.0  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="intensity must be a nrgloops.CarbonIntensity"):
        budget.intensity = 5.0  # type: ignore[assignment]
    budget.intensity = CarbonIntensity(0.0, source="solar noon")
    assert budget.intensity.at(0.0) == 0.0
