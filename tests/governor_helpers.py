"""Shared by the governor tests: a fake tree's whole state, a run held open in
another process, a journal made to look like a dead run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["DEAD_PID", "REPO", "hold_powercap", "limits", "mark_dead"]

REPO = Path(__file__).resolve().parents[1]
DEAD_PID = 999_999_999  # above pid_max: no process has it


def limits(root: Path) -> dict[str, str]:
    """Every constraint limit and enabled flag of every zone (the whole state)."""
    out = {}
    for zone in sorted(os.listdir(root)):
        d = root / zone
        for f in sorted(os.listdir(d)):
            if f.endswith("power_limit_uw") or f == "enabled":
                out[f"{zone}/{f}"] = (d / f).read_text().strip()
    return out


def mark_dead(journal: Path) -> None:
    """Make ``journal`` look like the journal of a run that is gone."""
    doc = json.loads(journal.read_text())
    doc["pid"] = DEAD_PID
    journal.write_text(json.dumps(doc))


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nrgloops.governors import PowercapGovernor
    gov = PowercapGovernor(sys.argv[1], journal=sys.argv[2])
    with gov.applied(float(sys.argv[3])):
        print("ready", flush=True)
        time.sleep(60)
    """
)


def hold_powercap(tree_root: Path, journal: Path, cap: float) -> subprocess.Popen[str]:
    """A child Python holding a powercap run open; returns once it says ready."""
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tree_root), str(journal), str(cap)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise AssertionError(f"the holder did not start: {line!r} {p.communicate()[1]}")
    return p
