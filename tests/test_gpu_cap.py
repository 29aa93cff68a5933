"""The GPU example and the GPU cap benchmark, smoke-tested without a GPU.

The benchmark's ``--dry-run`` runs its whole pipeline on a SIMULATED GPU (a
fake libnvidia-ml and batches that add energy to it); its checks are the ones
the real run makes, and a failed check fails the run (exit 1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRY_RUN = [
    str(ROOT / "benchmarks" / "gpu_cap.py"),
    "--dry-run",
    "--baseline-seconds",
    "1",
    "--calibrate-seconds",
    "0.5",
]


def _run(args: list[str], timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _needs_gcc() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: the dry run builds the fake libnvidia-ml")


def test_example_runs_on_the_cpu_and_says_it_estimates() -> None:
    pytest.importorskip("torch", reason="the GPU example needs PyTorch (not a test requirement)")
    done = _run(
        [str(ROOT / "examples" / "gpu_inference_cap.py"), "--device", "cpu", "--seconds", "1.5"]
        + ["--cap", "9"]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "no CUDA GPU here" in out and "ESTIMATED" in out
    for line in (
        "requests served on time",
        "share served by the full model",
        "energy per request",
        "average power",
        "peak windowed power",
        "share of time over the cap",
    ):
        assert line in out, line
    assert "(estimated)" in out and "(measured)" not in out


def test_benchmark_dry_run_holds_the_cap_and_writes_its_files(tmp_path: Path) -> None:
    # Long enough for the loop's mix to settle (3-4 s on the simulated GPU):
    # every check must pass, so the run exits 0.
    _needs_gcc()
    args = ["--out", str(tmp_path), "--seconds", "8", "--settle", "4", "--caps", "300"]
    done = _run(DRY_RUN + args)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "SIMULATED" in out
    for f in ("gpu_cap_dryrun.csv", "gpu_cap_dryrun.json", "gpu_cap_dryrun.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    data = json.loads((tmp_path / "gpu_cap_dryrun.json").read_text())
    assert [r["mode"] for r in data["rows"]] == [
        "uncapped",
        "nrg-loop",
        "duty-cycle",
        "bare-switch",
    ]
    assert data["meta"]["dry_run"] is True
    assert [c["pass"] for c in data["checks"]] == [True] * 4
    verdicts = [line.split()[0] for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert verdicts == ["PASS"] * 4
    header = (tmp_path / "gpu_cap_dryrun.csv").read_text().splitlines()[1]
    assert header.startswith("mode,cap_w,avg_power_w")


def test_device_script_fails_when_the_cap_is_not_held(tmp_path: Path) -> None:
    # The device run as prepared (benchmarks/gpu_device_run.sh), on the
    # simulated GPU: 150 W is under the early exit's own power (209 W there), so
    # no mix can hold it, a check FAILs, and the script's exit status says so.
    _needs_gcc()
    fast = "--dry-run --seconds 1 --baseline-seconds 0.5 --settle 0.3 --calibrate-seconds 0.3"
    env = {**os.environ, "OUT": str(tmp_path), "NRG_GPU_ARGS": f"{fast} --caps 150"}
    env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_device_run.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    assert any(
        line.startswith("FAIL") and "within 5% of the cap" in line for line in out.splitlines()
    )
    assert "ERROR" not in out  # failed on the figures, not on a crash
    assert "== done: exit 1" in out
    log = (tmp_path / "gpu_cap.log").read_text()
    assert "SIMULATED" in log and (tmp_path / "gpu_cap_dryrun.json").stat().st_size > 0
