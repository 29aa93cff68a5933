"""The substring sweep end to end on a tiny corpus, and its pieces."""

from __future__ import annotations

import csv
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
    with pytest.raises(RuntimeError, match="--caps"):
        sweep_caps(20.0, 20.1, (0.5,))


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
    knob = thread_knob(8)  # least setting: 2 of 8 threads
    # idle 10 W, uncapped 50 W: the NRG-loop's floor is about 10 + 40 * 2/8 = 20 W
    lines = cap_warnings([5.0, 15.0, 30.0, 50.0, 60.0], 10.0, 50.0, 8, knob)
    assert len(lines) == 4
    assert "5 W is below the idle power" in lines[0] and "no mode" in lines[0]
    assert "15 W" in lines[1] and "NRG-loop cannot hold it" in lines[1]
    assert "20.00 W" in lines[1] and "estimated" in lines[1]
    assert "50 W is at or above the uncapped" in lines[2]
    assert "60 W" in lines[3]
    assert cap_warnings([30.0], 10.0, 50.0, 8, knob) == []


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
    assert lines[3].split()[1:6] == ["5", "5.50", "10.50", "25%", "16.5"]
    assert "MEASURED" in lines[-1] or "SIMULATED" in lines[-1]
    assert len(format_table([], fake).splitlines()) == 3  # header, rule, the meter line
