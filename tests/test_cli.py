"""The nrgloops command: info, measure, bad input (exit 2, nothing changed),
Ctrl-C and SIGTERM mid-sweep (system restored, rows written), restore."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nrgloops.cli import main
from nrgloops.governors import Journal, probe_governors
from tests.cgroups import nrgloops_cgroups

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "journal"
    monkeypatch.setenv("NRGLOOPS_JOURNAL_DIR", str(d))
    return d


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "meters:" in out and "governors:" in out
    assert "cores usable" in out
    for kind in ("msr", "powercap", "perf", "model", "nvml"):
        assert f"  {kind} " in out
    assert "model     available, estimated" in out
    assert "--meter auto picks:" in out and "--governor auto picks:" in out
    # every refused one says why
    for line in out.splitlines():
        if "refused:" in line:
            assert len(line.split("refused:")[1].strip()) > 10


@pytest.mark.parametrize(
    "caps, message",
    [("0", "> 0"), ("-5", "> 0"), ("abc", "not a number"), ("nan", "> 0"), ("", "at least one")],
)
def test_bad_caps_exit_2_before_work(
    caps: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    groups = nrgloops_cgroups()
    assert main(["bench", "substring", "--caps", caps, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not out.exists()  # nothing was started, not even the output directory
    assert nrgloops_cgroups() == groups


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--caps", "30,30"], "30 given more than once"),
        (["--caps", "30,35,30W"], "30 given more than once"),
        (["--seed", "-1"], "seed must be an int"),
        (["--size-mb", "1e30"], "must fit in memory"),
        (["--size-mb", "inf"], "size_mb must be a finite number"),
        (["--strings", "0"], "strings must be an integer in [1, 10000000]"),
        (["--idle-s", "1e30"], "idle_s must be a finite number of seconds in (0, 86400]"),
        (["--target-s", "1e30"], "target_s must be"),
    ],
)
def test_bad_values_exit_2_before_work(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["bench", "substring", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_unwritable_out_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["bench", "substring", "--caps", "10", "--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err


def test_unavailable_governor_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reasons = probe_governors()
    missing = [g for g, why in reasons.items() if why is not None]
    if not missing:
        pytest.skip("every governor is available on this machine")
    gov = missing[0]
    assert main(["bench", "substring", "--governor", gov, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{gov} governor" in err
    assert not list((tmp_path / "o").glob("substring.*"))


def test_unavailable_meter_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nrgloops.meters import open_meter

    try:
        open_meter("msr")
        pytest.skip("the msr meter works here")
    except Exception:
        pass
    assert main(["bench", "substring", "--meter", "msr", "--out", str(tmp_path / "o")]) == 2
    assert "msr" in capsys.readouterr().err


def test_bad_flags_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "substring", "--governor", "magic"])
    assert info.value.code == 2
    assert main(["bench", "substring", "--size-mb", "0", "--out", str(tmp_path)]) == 2
    assert main(["bench", "substring", "--strings", "0", "--out", str(tmp_path)]) == 2


def test_measure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "--meter", "model", "--", sys.executable, "-c", "pass"]) == 0
    err = capsys.readouterr().err
    assert " J   total" in err and " W   average power" in err and "ESTIMATED" in err
    assert main(["measure", "--meter", "model", "--", "sh", "-c", "exit 3"]) == 3
    assert main(["measure", "--", "no-such-command-xyz"]) == 2
    assert main(["measure"]) == 2


def test_governor_restore(
    tmp_path: Path, _journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["governor", "restore"]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    # a run that died holding a (fake) limit
    limit = tmp_path / "constraint_0_power_limit_uw"
    limit.write_text("15000000\n")
    j = Journal(_journal)
    j.add({"op": "write", "path": str(limit), "old": "28000000"})
    doc = json.loads(j.path.read_text())
    doc["pid"] = 999_999_999
    j.path.write_text(json.dumps(doc))
    # outside the trees the governors write: refused, named, exit 1
    assert main(["governor", "restore"]) == 1
    err = capsys.readouterr().err
    assert "entry 0 skipped" in err and "outside the trees" in err
    assert limit.read_text() == "15000000\n"
    assert main(["governor", "restore", "--tree", str(tmp_path)]) == 0
    assert "undone: restored" in capsys.readouterr().out
    assert limit.read_text() == "28000000\n"
    assert not list(_journal.glob("*.json"))


def _sweep(out: Path, journal: Path, governor: str) -> subprocess.Popen[str]:
    env = dict(os.environ, NRGLOOPS_JOURNAL_DIR=str(journal), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nrgloops",
            "bench",
            "substring",
            "--meter",
            "model",
            "--governor",
            governor,
            "--caps",
            "9,10",
            "--size-mb",
            "4",
            "--strings",
            "100000",
            "--idle-s",
            "0.2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def _wait_for(p: subprocess.Popen[str], marker: str, seen: list[str], timeout: float = 60) -> None:
    assert p.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"never saw {marker!r}: {''.join(seen)}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_sweep(tmp_path: Path, _journal: Path, sig: int, code: int) -> None:
    governor = "cgroup" if probe_governors()["cgroup"] is None else "none"
    out = tmp_path / "out"
    # So many strings that the uncapped run lasts minutes: interrupt it.
    p = _sweep(out, _journal, governor)
    seen: list[str] = []
    _wait_for(p, "[uncapped]", seen)
    time.sleep(0.5)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == code, stderr
    assert "interrupted" in stderr and "restored" in stderr
    assert (out / "substring.csv").exists() and (out / "substring.png").exists()
    doc = json.loads((out / "substring.json").read_text())
    assert doc["interrupted"] is True
    assert not nrgloops_cgroups(p.pid)
    assert not list(_journal.glob("*.json"))


def test_interrupt_during_governor_run_restores(tmp_path: Path, _journal: Path) -> None:
    if probe_governors()["cgroup"] is not None:
        pytest.skip("the cgroup governor is not available here")
    out = tmp_path / "out"
    env = dict(os.environ, NRGLOOPS_JOURNAL_DIR=str(_journal), PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nrgloops",
            "bench",
            "substring",
            "--meter",
            "model",
            "--governor",
            "cgroup",
            "--caps",
            "6",
            "--size-mb",
            "2",
            "--strings",
            "5000",
            "--idle-s",
            "0.2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    seen: list[str] = []
    _wait_for(p, "governor at a cap", seen)
    time.sleep(0.3)  # inside the governor's run: a cgroup exists now
    held = nrgloops_cgroups(p.pid)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert held, "the governor's cgroup should have existed mid-run"
    assert not nrgloops_cgroups(p.pid)
    assert not list(_journal.glob("*.json"))
    with open(out / "substring.csv", newline="") as f:
        modes = [r["mode"] for r in csv.DictReader(f)]
    assert modes == ["uncapped", "nrgloops"]  # the finished rows
    assert "uncapped" in stdout  # the table was printed
