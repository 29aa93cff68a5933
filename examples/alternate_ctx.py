"""Adapted loop, context-manager form: for loop bodies that cannot be split
into two functions.

Estimating the mean of many noisy sensor series: the full body averages all
of a series, the degraded one a tenth of it.  `loop.under_cap` says which
to run at each iteration (and counts it for the report).

    python examples/alternate_ctx.py [seconds]
"""

from __future__ import annotations

import random
import sys
import time

import nrgloops


def series(seed: int, n: int = 4000) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(20.0, 3.0) for _ in range(n)]


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    # The best meter here.  Where there is no energy counter it falls back to
    # the model meter (an estimate); scope="process" has it count only this
    # program's CPU time, so that other programs do not blur the example.
    meter = nrgloops.open_meter(scope="process")
    data = [series(k) for k in range(50)]
    # idle vs busy power of this machine, to put the cap between them
    with nrgloops.Sampler(meter) as s:
        time.sleep(0.3)
        idle_w = s.energy() / 0.3
    with nrgloops.Sampler(meter) as s:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            sum(data[0]) / len(data[0])
        busy_w = s.energy() / 0.3
    cap = nrgloops.PowerCap(idle_w + 0.6 * (busy_w - idle_w), meter=meter)
    print(f"idle {idle_w:.1f} W, busy {busy_w:.1f} W ({meter.label}); cap {cap.watts:.1f} W")

    means = []
    end = time.monotonic() + seconds
    with nrgloops.nrg_adapt(cap) as loop:
        k = 0
        while time.monotonic() < end:
            xs = data[k % len(data)]
            if loop.under_cap:
                means.append(sum(xs) / len(xs))  # NRG_ADAPT: every sample
            else:
                part = xs[::10]  # NRG_ALTERNATE: one sample in ten...
                means.append(sum(part) / len(part))
                time.sleep(0.0005)  # ...and the time saved is idle
            k += 1
    print(f"{len(means)} means, average {sum(means) / len(means):.3f} (true 20)")
    print(loop.report)


if __name__ == "__main__":
    main()
