"""A knob the library moves: the default mixed levels beside the paper's
thread ramp and the other grid policies.

A FakeMeter stands in for the hardware so that the power follows the knob
exactly: 10 W + 5 W per worker thread.  Under a 48 W cap no level fits the
5% band (7 threads = 45 W is under it, 8 = 50 W over the cap).  The default
policy, "mix" (``Knob(1, 16, 1)``), alternates 7 and 8 threads in the
proportion that averages to just under 48 W, so it uses the cap that a grid
level leaves unused.  The paper's bare ramp (band=0, dwell=0) swings up and
down at every iteration; "step", "aimd" and "pi" with the default band and
dwell settle on 7 (45 W) and only probe 8 now and then, less and less often.
The last column is the knob's level at the end: for "mix" the real-valued
level whose two neighbours it alternates (7.4: 8 threads 40% of the time).

    python examples/knob_ramp.py [seconds per policy]
"""

from __future__ import annotations

import sys
import time

import nrgloops
from nrgloops.testing import FakeMeter


def run(policy: str | None, seconds: float, bare: bool = False) -> nrgloops.Report:
    fake = FakeMeter(watts=10.0)
    if policy is None:  # the library's default: mixed levels
        threads = nrgloops.Knob(1, 16, 1)
    elif bare:  # the paper's ramp: no band, no dwell, no memory of the ceiling
        threads = nrgloops.Knob(1, 16, 1, policy=policy, band=0.0, dwell=0.0, backoff=False)
    else:
        threads = nrgloops.Knob(1, 16, 1, policy=policy)
    cap = nrgloops.PowerCap(48, window=0.05, meter=fake)

    @nrgloops.nrg_adapt(cap, knob=threads)
    def search_batch() -> None:
        fake.watts = 10.0 + 5.0 * threads.value  # "run with threads.value workers"
        time.sleep(0.0005)

    with search_batch:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            search_batch()
    return search_batch.report


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
    runs = [
        ("mix (default)", run(None, seconds)),
        ("bare ramp (paper)", run("step", seconds, bare=True)),
        ("step", run("step", seconds)),
        ("aimd", run("aimd", seconds)),
        ("pi", run("pi", seconds)),
    ]
    print(f"powers {runs[0][1].label} (a fake meter: 10 W + 5 W per thread), cap 48 W")
    print(
        f"{'policy':18s} {'avg W':>6s} {'peak W':>7s} {'over cap':>9s} {'moves':>6s} "
        f"{'reversals':>9s} {'level':>6s}"
    )
    for name, r in runs:
        k = r.knob or {}
        print(
            f"{name:18s} {r.avg_power_w:6.1f} {r.peak_power_w:7.1f} "
            f"{100 * (r.over_cap_fraction or 0):8.1f}% {k['moves']:6d} {k['reversals']:9d} "
            f"{k['level']:6.2f}"
        )
    print()
    print(runs[0][1])


if __name__ == "__main__":
    main()
