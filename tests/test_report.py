"""Reports: figures from the sampler, bounded timeline, JSON/CSV round trips."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest

from nrgloops.constraints import EnergyBudget, PowerCap
from nrgloops.control import Knob
from nrgloops.loops import nrg_adapt, perforate, truncate
from nrgloops.report import Recorder, Report
from nrgloops.sampler import Sampler
from nrgloops.testing import FakeMeter


@pytest.fixture
def fake() -> FakeMeter:
    return FakeMeter(40.0)


def adapted_report(fake: FakeMeter) -> Report:
    @nrg_adapt(PowerCap(50, window=0.02, meter=fake))
    def full() -> None:
        fake.watts = 80.0
        time.sleep(0.0005)

    @full.alternate
    def degraded() -> None:
        fake.watts = 20.0
        time.sleep(0.0005)

    with full:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            full()
    return full.report


def synthetic() -> Report:
    return Report(
        kind="adapt",
        iterations={"adapt": 3, "alternate": 1},
        duration_s=1.5,
        energy_j=60.25,
        avg_power_w=40.1666,
        peak_power_w=55.0,
        over_cap_fraction=0.125,
        measured=False,
        meter="model",
        window_s=0.1,
        cap_w=45.0,
        knob={
            "value": 4,
            "lo": 0,
            "hi": 8,
            "step": 1.0,
            "policy": "pi",
            "band": 0.05,
            "moves": 3,
            "reversals": 1,
        },
        name="search",
        timeline=[(0.0, 0.0, "adapt"), (0.1, 44.5, 4), (0.2, 46.0, 2.5), (0.3, 40.0, None)],
    )


# -- round trips -------------------------------------------------------------------
def test_json_round_trip(fake: FakeMeter) -> None:
    for r in (adapted_report(fake), synthetic()):
        text = r.to_json()
        assert json.loads(text)["label"] == r.label
        assert Report.from_json(text) == r


def test_csv_round_trip(fake: FakeMeter, tmp_path: Path) -> None:
    for i, r in enumerate((adapted_report(fake), synthetic())):
        path = tmp_path / f"r{i}.csv"
        side = r.to_csv(path)
        assert side == tmp_path / f"r{i}.csv.json"
        lines = path.read_text().splitlines()
        assert lines[0] == f"time_s,power_w,{r.value_column()},label"
        assert len(lines) == 1 + len(r.timeline)
        assert json.loads(side.read_text())["label"] == r.label
        assert Report.from_csv(path) == r


def test_pandas_reads_the_csv_as_it_is(fake: FakeMeter, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    for i, r in enumerate((adapted_report(fake), synthetic())):
        path = tmp_path / f"r{i}.csv"
        r.to_csv(path)
        df = pd.read_csv(path)
        assert list(df.columns) == ["time_s", "power_w", r.value_column(), "label"]
        assert len(df) == len(r.timeline)
        assert df["time_s"].dtype.kind == "f" and df["power_w"].dtype.kind == "f"
        assert list(df["time_s"]) == [p[0] for p in r.timeline]
        assert (df["label"] == r.label).all()
        # the same frame as to_pandas gives, summary included
        mem = r.to_pandas()
        assert list(mem.columns) == list(df.columns) and len(mem) == len(df)
        assert list(mem["power_w"]) == pytest.approx(list(df["power_w"]), nan_ok=True)
        assert mem.attrs["report"]["label"] == r.label
        assert mem.attrs["report"]["iterations_adapt"] == r.iterations["adapt"]


def test_summary_frame_is_one_flat_row() -> None:
    pd = pytest.importorskip("pandas")
    r = synthetic()
    df = r.to_pandas("summary")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["energy_j"] == 60.25 and row["label"] == "estimated"
    assert row["iterations_alternate"] == 1 and row["knob_policy"] == "pi"
    frame = pd.concat([df, dataclasses.replace(r, name="other").to_pandas("summary")])
    assert list(frame["name"]) == ["search", "other"]
    with pytest.raises(ValueError, match="what must be"):
        r.to_pandas("everything")


def test_timeline_table() -> None:
    r = synthetic()
    text = r.timeline_table()
    lines = text.splitlines()
    assert lines[0].split() == ["time", "s", "power", "W", "knob", "level"]
    assert lines[2].split() == ["0.100", "44.5", "4"] and lines[4].split() == ["0.300", "40"]
    assert "power estimated, 0.1 s windows; 4 of 4 points" in lines[-1]
    long = dataclasses.replace(r, timeline=[(i * 0.1, 40.0, 2) for i in range(100)])
    short = long.timeline_table(max_rows=5).splitlines()
    assert len(short) == 1 + 5 + 1 and short[-2].split()[0] == "9.900"
    with pytest.raises(ValueError, match="max_rows"):
        r.timeline_table(max_rows=1)
    with pytest.raises(TypeError, match="max_rows"):
        r.timeline_table(max_rows=2.5)  # type: ignore[arg-type]


def test_from_csv_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a CSV written by Report.to_csv"):
        Report.from_csv(path)
    (tmp_path / "x.csv.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not the summary"):
        Report.from_csv(path)
    with pytest.raises(TypeError, match="path"):
        synthetic().to_csv(3)  # type: ignore[arg-type]


def test_to_dict_has_every_field() -> None:
    d = synthetic().to_dict()
    for key in (
        "iterations",
        "duration_s",
        "energy_j",
        "avg_power_w",
        "peak_power_w",
        "over_cap_fraction",
        "measured",
        "meter",
        "cap_w",
        "timeline",
        "label",
    ):
        assert key in d
    assert d["label"] == "estimated"


# -- readable text -----------------------------------------------------------------------
def test_str_carries_units_and_measured_or_estimated(fake: FakeMeter) -> None:
    s = str(synthetic())
    assert "estimated" in s and "measured" not in s
    for piece in (
        "1.500 s",
        "60.25 J",
        "55 W",
        "cap 45 W",
        "12.5% of the time",
        "adapt 3",
        "alternate 1",
        "knob (pi)",
        "1 reversals",
    ):
        assert piece in s, (piece, s)
    m = str(dataclasses.replace(synthetic(), measured=True, meter="msr"))
    assert "measured" in m and "estimated" not in m and "simulated" not in m


def test_a_fake_meter_report_says_simulated(fake: FakeMeter) -> None:
    r = adapted_report(fake)
    assert r.measured is True and r.meter == "fake" and r.label == "simulated"
    s = str(r)
    assert "J simulated" in s and "power (simulated)" in s and "measured" not in s
    d = json.loads(r.to_json())
    assert d["measured"] is True and d["label"] == "simulated"


def test_missing_figures_are_null_in_json_and_csv_and_n_a_in_text(tmp_path: Path) -> None:
    def reject(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    r = dataclasses.replace(
        synthetic(),
        energy_j=math.nan,
        avg_power_w=math.nan,
        peak_power_w=math.nan,
        over_cap_fraction=math.nan,
        budget_j=10.0,
        note="loop shorter than the meter's sampling period (0.01 s)",
    )
    d = json.loads(r.to_json(), parse_constant=reject)
    assert d["energy_j"] is None and d["over_cap_fraction"] is None and d["note"] == r.note
    back = Report.from_json(r.to_json())
    assert math.isnan(back.energy_j) and math.isnan(back.peak_power_w)
    assert back.over_cap_fraction is not None and math.isnan(back.over_cap_fraction)
    path = tmp_path / "r.csv"
    r.to_csv(path)
    json.loads((tmp_path / "r.csv.json").read_text(), parse_constant=reject)
    assert math.isnan(Report.from_csv(path).avg_power_w)
    s = str(r)
    assert "energy n/a" in s and "average n/a, peak n/a" in s and "over it n/a" in s
    assert "used n/a" in s and "n/a: loop shorter than the meter's sampling period" in s
    assert "nan" not in s.lower()
    # without a cap, a null over_cap_fraction stays None
    nocap = dataclasses.replace(r, cap_w=None, over_cap_fraction=None)
    assert Report.from_json(nocap.to_json()).over_cap_fraction is None


def test_str_of_truncate_and_perforate(fake: FakeMeter) -> None:
    t = truncate(range(3), EnergyBudget(1000, meter=fake))
    list(t)
    s = str(t.report)
    assert "truncate loop" in s and "budget 1000 J" in s and "ran 3" in s and "left 0" in s
    p = perforate(iter(range(3)), PowerCap(1000, meter=fake))
    list(p)
    assert "left n/a" in str(p.report) and "skipped 0" in str(p.report)


# -- figures from the sampler ----------------------------------------------------------------
def test_recorder_peak_and_over_cap_share(fake: FakeMeter) -> None:
    fake.watts = 20.0
    with Sampler(fake) as s:
        s.watch(0.01)
        t0 = time.monotonic()
        rec = Recorder(s, window=0.01, domain=None, cap_w=50.0, t0=t0)
        time.sleep(0.2)
        fake.watts = 80.0
        time.sleep(0.2)
        rec.pull(time.monotonic())
    assert rec.over_fraction() == pytest.approx(0.5, abs=0.1)
    assert rec.peak == pytest.approx(80.0, rel=0.05)
    assert rec.covered_s == pytest.approx(0.4, abs=0.05)


def test_recorder_timeline_memory_is_bounded(fake: FakeMeter) -> None:
    with Sampler(fake) as s:
        rec = Recorder(s, window=0.1, domain=None, cap_w=None, t0=0.0, max_points=100)
        for k in range(100_000):  # 1000 s of marks every 10 ms
            rec.mark(k * 0.01, 40.0, k)
    assert len(rec.points) < 100
    assert rec.points[0][0] == 0.0 and rec.points[-1][0] > 900.0
    times = [t for t, _, _ in rec.points]
    assert times == sorted(times)
    assert rec.over_fraction() is None


def test_snapshot_while_running_then_final(fake: FakeMeter) -> None:
    knob = Knob(0, 4, 1)
    with nrg_adapt(PowerCap(1e6, meter=fake), knob=knob) as loop:
        for _ in range(10):
            loop.step()
        time.sleep(0.05)  # several sampler rows even when the sampler thread is late (a loaded CI)
        snap = loop.report
        assert snap.running and snap.iterations["adapt"] == 10
        assert "(running)" in str(snap) and "idle time included; close()" in str(snap)
    final = loop.report
    assert not final.running and final.duration_s >= snap.duration_s
    assert final.knob is not None and final.knob["value"] == 4
    assert final.avg_power_w == pytest.approx(40.0, rel=0.01)
    assert final.energy_j == pytest.approx(40.0 * final.duration_s, rel=0.25)
    assert not math.isnan(final.peak_power_w)
