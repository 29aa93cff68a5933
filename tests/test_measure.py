"""``nrgloops measure``: short and long commands, failing ones, signals, files, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nrgloops.cli import main
from nrgloops.measure import measure
from nrgloops.testing import FakeMeter

PY = sys.executable


def slow_fake(watts: float, period: float) -> FakeMeter:
    """A fake meter sampled every ``period`` s (a command can be shorter than that)."""
    m = FakeMeter(watts)
    m.resolution_s = m.default_period = period
    return m


def test_a_long_command_gets_energy_time_and_powers() -> None:
    m = FakeMeter(50.0)
    r = measure(["sleep", "0.5"], m)
    assert r.exit_status == 0 and r.note == "" and r.label == "simulated"
    assert 0.5 <= r.duration_s < 5.0
    # constant power: the energy read at the two edges is exact up to the
    # few microseconds between a clock read and the fork / the reaping
    assert r.total_j == pytest.approx(50.0 * r.duration_s, rel=0.01)
    assert r.energy_j == {"package-0": r.total_j}
    assert r.avg_power_w == pytest.approx(50.0, rel=0.01)
    assert r.peak_power_w >= r.avg_power_w
    assert r.peak_power_w == pytest.approx(50.0, rel=0.01)


def test_the_peak_is_the_highest_window_inside_the_run() -> None:
    m = FakeMeter(20.0)
    threading.Timer(0.4, lambda: setattr(m, "watts", 100.0)).start()
    r = measure(["sleep", "1.0"], m)
    assert r.peak_power_w == pytest.approx(100.0, rel=0.02)
    assert 20.0 < r.avg_power_w < r.peak_power_w


def test_a_command_shorter_than_one_period_has_no_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = slow_fake(30.0, period=0.5)
    r = measure(["true"], m)
    assert r.exit_status == 0
    assert math.isnan(r.total_j) and math.isnan(r.avg_power_w) and math.isnan(r.peak_power_w)
    assert "shorter than one sampling period" in r.note and "0.5 s" in r.note
    text = str(r)
    assert "n/a J" in text and "n/a W" in text and "n/a: the command ran" in text
    d = json.loads(r.to_json())
    assert d["total_j"] is None and d["energy_j"] == {"package-0": None}
    assert d["label"] == "simulated"


def test_exit_status_passes_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "--meter", "model", "--", "sh", "-c", "exit 3"]) == 3
    assert main(["measure", "--meter", "model", "--", "sh", "-c", "kill -TERM $$"]) == 143
    err = capsys.readouterr().err
    assert "exit status 3" in err and "exit status 143" in err
    assert "for: sh -c 'exit 3'" in err  # the command as a shell would take it back
    assert "ESTIMATED by the model meter" in err and "time elapsed" in err


def test_cli_text_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pandas = pytest.importorskip("pandas")
    out = tmp_path / "m.csv"
    assert main(["measure", "--meter", "model", "-o", str(out), "--", "sleep", "0.2"]) == 0
    err = capsys.readouterr().err
    for words in ("J   package-0", "J   total", "s   time elapsed", "W   average power"):
        assert words in err
    df = pandas.read_csv(out)
    assert list(df["domain"]) == ["package-0", "total"]
    # package-0 is the whole total here: its row has the total's peak
    assert df["peak_power_w"].iloc[0] == df["peak_power_w"].iloc[1] > 0
    assert df["energy_j"].iloc[-1] > 0 and (df["label"] == "estimated").all()
    assert df["duration_s"].iloc[0] >= 0.2
    js = tmp_path / "m.json"
    assert main(["measure", "--meter", "model", "-o", str(js), "--", "sleep", "0.05"]) == 0
    d = json.loads(js.read_text())
    assert d["command"] == ["sleep", "0.05"] and d["exit_status"] == 0
    assert d["label"] == "estimated" and d["measured"] is False


def test_sigint_sent_to_measure_is_forwarded(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [PY, "-m", "nrgloops", "measure", "--meter", "model", "--", PY, "-c", child],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # no terminal: only what measure forwards reaches the child
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert "exit status 7" in err and "SIGINT" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["-o", "x.txt"], "-o must name a .json or .csv"),
        (["-o", "/no/such/dir/x.json"], "-o /no/such/dir/x.json"),
        ([], "give a command"),
    ],
)
def test_bad_cli_input_exits_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["measure", "--meter", "model", *argv, "--", *(["true"] if argv else [])]) == 2
    assert words in capsys.readouterr().err
    assert not Path("x.txt").exists()


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(TypeError, match="command must be a list"):
        measure("sleep 1", "model")
    with pytest.raises(ValueError, match="command must name a program"):
        measure([], "model")
    with pytest.raises(TypeError, match=r"command\[1\]"):
        measure(["sleep", 1], "model")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown meter kind"):
        measure(["true"], "bogus")
    with pytest.raises(FileNotFoundError):
        measure(["/no/such/program"], "model")
