"""The substring sweep end to end on a tiny corpus, and its pieces."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest

from nrgloops.bench.substring import (
    COLUMNS,
    Config,
    Row,
    SubstringBench,
    cap_warnings,
    check_caps,
    figure,
    format_table,
    parse_caps,
    plot,
    sweep_caps,
    thread_knob,
)
from nrgloops.governors import CgroupGovernor, GovernorUnavailable
from nrgloops.testing import FakeMeter
from tests.cgroups import nrgloops_cgroups


def _cgroup_here() -> bool:
    try:
        CgroupGovernor().check()
    except (GovernorUnavailable, OSError):
        return False
    return True


def _tiny(meter: object, governor: str, caps: list[float]) -> Config:
    return Config(
        caps=caps,
        governor=governor,
        meter=meter,  # type: ignore[arg-type]
        size_mb=1,
        strings=60,
        idle_s=0.2,
    )


@pytest.mark.parametrize("meter", ["model", "fake"])
def test_tiny_sweep_writes_three_files(
    tmp_path: Path, meter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NRGLOOPS_JOURNAL_DIR", str(tmp_path / "journal"))
    governor = "cgroup" if _cgroup_here() else "none"
    m = FakeMeter(watts=10.0, measured=False) if meter == "fake" else "model"
    lines: list[str] = []
    groups = nrgloops_cgroups()
    bench = SubstringBench(_tiny(m, governor, [12.0, 30.0]), log=lines.append)
    bench.run()
    paths = bench.write(tmp_path / "out")
    assert [p.name for p in paths] == ["substring.csv", "substring.json", "substring.png"]
    assert nrgloops_cgroups() == groups  # the governor left nothing behind

    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == COLUMNS
    modes = [(r["mode"], r["cap_w"]) for r in rows]
    expect = [("uncapped", ""), ("nrgloops", "12"), ("nrgloops", "30")]
    if governor != "none":
        expect = [
            ("uncapped", ""),
            ("nrgloops", "12"),
            ("governor", "12"),
            ("nrgloops", "30"),
            ("governor", "30"),
        ]
    assert modes == expect
    assert rows[0]["energy_rel"] == "1" and rows[0]["time_rel"] == "1"
    assert {r["measured"] for r in rows} == {"False"}
    for r in rows:
        assert float(r["energy_j"]) > 0 and float(r["time_s"]) > 0

    doc = json.loads(paths[1].read_text())
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["meter"]["measured"] is False and doc["meter"]["label"] == (
        "simulated" if meter == "fake" else "estimated"
    )
    assert doc["interrupted"] is False
    assert doc["corpus"]["strings"] == 60
    assert doc["bottom_w"] > 0 and doc["bottom_threads"] == thread_knob(doc["machine"]["cores"]).lo
    assert any("[bottom]" in line for line in lines)
    matches = {r["details"]["matches"] for r in doc["rows"]}
    assert len(matches) == 1  # every mode did the same work
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("[uncapped]" in line for line in lines)
    if meter == "fake":  # 10 W idle and uncapped: both caps are above what anything draws
        warned = [line for line in lines if "warning: cap" in line]
        assert len(warned) == 2 and all("at or above the uncapped" in w for w in warned)
    for r in doc["rows"]:  # the governor's trace, read without knowing its kind
        assert ("mean_quota_cpus" in r["details"]) == (r["mode"] == "governor")
    table = bench.table()
    assert ("SIMULATED" if meter == "fake" else "ESTIMATED") in table and "uncapped" in table
    assert not list((tmp_path / "journal").glob("*.json"))


def test_fake_meter_over_cap_sheds_threads(tmp_path: Path) -> None:
    # A fake power always over the cap: the knob goes to its lowest level.
    fake = FakeMeter(watts=50.0)
    cfg = Config(caps=[20.0], governor="none", meter=fake, size_mb=2, strings=1500, idle_s=0.1)
    bench = SubstringBench(cfg, log=lambda _: None)
    bench.run()
    (_, row) = bench.rows
    assert row.mode == "nrgloops"
    assert row.over_cap_fraction == 1.0
    if bench.cores == 1:
        pytest.skip("one core: the thread knob has a single level, no thread to shed")
    assert row.details["knob"]["moves"] >= 1 and row.details["mean_threads"] < bench.cores


def test_sweep_caps() -> None:
    assert sweep_caps(5.0, 21.0, (0.5, 0.75)) == [13.0, 17.0]
    with pytest.raises(RuntimeError, match="bottom level.*--caps"):
        sweep_caps(20.0, 20.1, (0.5,))
    # from the bottom level (13 W) to uncapped (18.28 W): every cap between the two levels
    caps = sweep_caps(13.0, 18.28, (0.25, 0.5, 0.75))
    assert caps == [14.3, 15.6, 17.0] and all(13.0 < c < 18.28 for c in caps)


def test_thread_knob() -> None:
    def span(cores: int) -> tuple[float, float, float]:
        k = thread_knob(cores)
        return (k.lo, k.hi, k.step)

    assert span(1) == (1, 1, 1)
    assert span(2) == (1, 2, 1)
    assert span(3) == (1, 3, 1)
    assert span(8) == (2, 8, 2)  # the paper's +2/-2
    assert span(5) == (2, 4, 2)
    assert thread_knob(8, "aimd").policy == "aimd"


def test_parse_caps() -> None:
    assert parse_caps("30,35, 40") == [30.0, 35.0, 40.0]
    assert parse_caps("12.5W") == [12.5]
    for bad, what in [
        ("0", "> 0"),
        ("-3", "> 0"),
        ("abc", "not a number"),
        ("nan", "> 0"),
        ("inf", "> 0"),
        ("", "at least one"),
        (",", "at least one"),
    ]:
        with pytest.raises(ValueError, match=what):
            check_caps(parse_caps(bad))
    with pytest.raises(ValueError, match="30 given more than once"):
        check_caps(parse_caps("30,35,30"))
    with pytest.raises(TypeError, match=r"caps\[1\] must be a number of watts"):
        check_caps([30.0, "35"])


def test_config_refuses_what_the_machine_cannot_run() -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        Config(seed=-1).validate()
    with pytest.raises(TypeError, match="seed"):
        Config(seed=1.5).validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_mb must fit in memory.*MemAvailable"):
        Config(size_mb=1e30).validate()
    with pytest.raises(ValueError, match="caps must not repeat a value: 30"):
        Config(caps=[30.0, 30.0]).validate()
    Config(seed=2**40, size_mb=1).validate()  # numpy takes any seed >= 0


def test_cap_warnings_say_which_mode_cannot_hold_a_cap() -> None:
    knob = thread_knob(8)  # bottom level: 2 of 8 threads
    # idle 10 W, uncapped 50 W, the bottom level measured at 20 W
    lines = cap_warnings([5.0, 15.0, 30.0, 50.0, 60.0], 10.0, 50.0, 20.0, knob)
    assert len(lines) == 4
    assert "5 W is below the idle power" in lines[0] and "no mode" in lines[0]
    assert "15 W" in lines[1] and "NRG-loop cannot hold it" in lines[1]
    assert "20.00 W" in lines[1] and "measured" in lines[1] and "2 thread(s)" in lines[1]
    assert "50 W is at or above the uncapped" in lines[2]
    assert "60 W" in lines[3]
    assert cap_warnings([30.0], 10.0, 50.0, 20.0, knob) == []
    # the reviewer's quiet run: a cap under the 1-thread level (13 W) is flagged
    assert "cannot hold" in cap_warnings([12.3], 5.08, 18.28, 13.0, thread_knob(2))[0]


def test_sweep_caps_are_distinct() -> None:
    assert sweep_caps(10.0, 10.3, (0.3, 0.31, 0.9)) == [10.1, 10.3]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="caps"):
        SubstringBench(Config(caps=[-1.0]))
    with pytest.raises(ValueError, match="policy"):
        SubstringBench(Config(policy="bang"))
    with pytest.raises(ValueError, match="meter"):
        SubstringBench(Config(meter="geiger"))
    with pytest.raises(ValueError, match="size_mb"):
        SubstringBench(Config(size_mb=0))
    with pytest.raises(ValueError, match="size_mb"):
        SubstringBench(Config(size_mb=math.nan))


def test_plot_partial_and_table(tmp_path: Path) -> None:
    # An interrupted sweep (the uncapped row and one capped row of the two
    # asked for) still draws and prints what it has.
    fake = FakeMeter(watts=10.0)
    cfg = Config(caps=[5.0, 8.0], governor="none", meter=fake, size_mb=1, strings=10, idle_s=0.05)
    bench = SubstringBench(cfg, log=lambda _: None)

    def row(mode: str, cap: float | None, watts: float, over: float | None, rel: float) -> Row:
        return Row(
            mode, cap, watts, 10.5, over, 20.0 * rel, rel, 2.0, 1.0, True, "fake", {"matches": 3}
        )

    bench.rows = [row("uncapped", None, 10.0, None, 1.0), row("nrgloops", 5.0, 5.5, 0.25, 0.825)]
    bench.idle_w = 4.0
    doc = bench.document(interrupted=True)
    assert doc["interrupted"] is True and [r["mode"] for r in doc["rows"]] == [
        "uncapped",
        "nrgloops",
    ]
    plot(doc, tmp_path / "partial.png")
    assert (tmp_path / "partial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = format_table(bench.rows, fake).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["uncapped", "nrgloops"]
    assert lines[3].split()[1:7] == ["5", "1", "5.50", "10.50", "25%", "16.5"]  # cap, round...
    assert "MEASURED" in lines[-1] or "SIMULATED" in lines[-1]
    assert len(format_table([], fake).splitlines()) == 3  # header, rule, the meter line


def test_repeated_sweep_rounds_and_flags(tmp_path: Path) -> None:
    fake = FakeMeter(watts=10.0, measured=False)
    cfg = Config(caps=[20.0], governor="none", meter=fake, size_mb=1, strings=40, idle_s=0.05)
    cfg.repeat = 2
    bench = SubstringBench(cfg, log=lambda _: None)
    bench.run()
    assert [(r.mode, r.repeat) for r in bench.rows] == [
        ("uncapped", 0),
        ("nrgloops", 0),
        ("uncapped", 1),
        ("nrgloops", 1),
    ]
    for r in bench.rows:
        assert r.disturbed == (r.background_cpus > 0.15)
        if r.mode == "uncapped":
            assert r.energy_rel == 1.0  # each round against its own uncapped run
    table = bench.table()
    assert "over 2 rounds: median [min - max]" in table and "(2 runs" in table
    paths = bench.write(tmp_path)
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["repeat"] for r in rows] == ["0", "0", "1", "1"]
    assert {r["disturbed"] for r in rows} <= {"True", "False"}
    assert all(r["background_cpus"] for r in rows)


def _doc(caps: list[float], rounds: int, disturbed_at: int = -1) -> dict[str, object]:
    rows = []
    k = 0
    for rnd in range(rounds):
        rows.append(_row("uncapped", None, rnd, 1.0, 20.0, False))
        for c in caps:
            k += 1
            rows.append(_row("nrgloops", c, rnd, 0.9 + 0.01 * rnd, c - 1, k == disturbed_at))
            rows.append(_row("governor", c, rnd, 1.2 + 0.02 * rnd, c + 0.5, False))
    return {
        "rows": rows,
        "machine": {"cpu_model": "Test CPU", "cores": 2},
        "meter": {"kind": "model", "measured": False, "label": "estimated", "window_s": 0.1}
        | {"description": "estimated"},
        "governor": {"kind": "cgroup"},
        "config": {"policy": "mix"},
        "idle_w": 5.0,
        "bottom_w": 11.0,
        "bottom_threads": 1,
    }


def _row(
    mode: str, cap: float | None, rnd: int, rel: float, watts: float, bad: bool
) -> dict[str, object]:
    return {
        "mode": mode,
        "cap_w": cap,
        "repeat": rnd,
        "energy_rel": rel,
        "energy_j": 100 * rel,
        "avg_power_w": watts,
        "peak_power_w": watts + 1,
        "time_s": 5.0,
        "disturbed": bad,
        "details": {"background_cpus": 0.5 if bad else 0.0},
    }


@pytest.mark.parametrize("caps", [[15.0], [12.0, 15.0, 18.0]])
def test_figure_axes_are_honest_and_caps_visible(caps: list[float], tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(_doc(caps, rounds=3, disturbed_at=1))
    try:
        ax_e, ax_p = fig.axes[:2]
        assert ax_e.get_ylim()[0] == 0 and ax_p.get_ylim()[0] == 0  # no zoom on noise
        for ax in (ax_e, ax_p):
            anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
            assert anchor.y1 <= 0  # the legend is under the plot, off the data
            assert list(ax.get_xticks()) == caps
        # each cap is a black bar at its own height, also when there is one
        bars = [c for c in ax_p.collections if c.get_label() == "the cap"]
        assert len(bars) == 1
        segments = sorted(bars[0].get_segments(), key=lambda seg: seg[0][1])
        assert [seg[0][1] for seg in segments] == caps
        for a, b in itertools.pairwise(segments):  # the bars of neighbouring caps never meet
            assert a[1][0] < b[0][0]
        # the legend names the policy in force, and the measured bottom level is drawn
        labels_p = [h.get_label() for h in ax_p.get_legend_handles_labels()[0]]
        assert any("policy mix" in label for label in labels_p)
        assert any("bottom level (1 thread(s)), measured" in label for label in labels_p)
        # median with min-max bars: the nrgloops energy line sits at the median round
        labels = [h.get_label() for h in ax_e.get_legend_handles_labels()[0]]
        assert "disturbed run" in labels and "uncapped runs, min-max" in labels
        assert "bars min-max" in ax_e.get_title()
    finally:
        plt.close(fig)
    plot(_doc(caps, rounds=1), tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"


def test_repeat_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeat"):
        SubstringBench(Config(repeat=0))
    with pytest.raises(TypeError, match="repeat"):
        SubstringBench(Config(repeat=1.5))  # type: ignore[arg-type]
    assert Config(quick=True, repeat=3).fractions == (0.5,)
    assert len(Config(quick=True).fractions) == 3
    from nrgloops.cli import main

    assert main(["bench", "substring", "--repeat", "0", "--out", str(tmp_path)]) == 2
