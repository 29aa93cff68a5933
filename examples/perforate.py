"""Perforated loop: skip a share of the iterations while over the power cap.

Averages the brightness of many "images"; while the windowed power is over
the cap, one image in two is skipped (evenly, deterministically), and the
mean is taken over the ones that ran.

    python examples/perforate.py [seconds]
"""

from __future__ import annotations

import random
import sys
import time

import nrgloops


def brightness(seed: int) -> float:
    rng = random.Random(seed)
    pixels = [rng.random() for _ in range(2000)]
    return sum(pixels) / len(pixels)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    # The best meter here.  Where there is no energy counter it falls back to
    # the model meter (an estimate); scope="process" has it count only this
    # program's CPU time, so that other programs do not blur the example.
    meter = nrgloops.open_meter(scope="process")
    with nrgloops.Sampler(meter) as s:
        time.sleep(0.3)
        idle_w = s.energy() / 0.3
    with nrgloops.Sampler(meter) as s:
        t = time.monotonic()
        for k in range(200):
            brightness(k)
        busy_w = s.energy() / (time.monotonic() - t)
    # a cap a third of the way from idle to busy: this loop goes over it
    cap = nrgloops.PowerCap(idle_w + (busy_w - idle_w) / 3, meter=meter)
    print(f"idle {idle_w:.1f} W, busy {busy_w:.1f} W ({meter.label}); cap {cap.watts:.1f} W")
    total = ran = 0.0
    n = 0
    loop = nrgloops.perforate(range(10**9), cap, rate=0.5)
    end = time.monotonic() + seconds
    for image in loop:
        total += brightness(image)
        ran += 1
        n = image
        if time.monotonic() > end:
            break
    print(f"mean brightness {total / ran:.4f} over {int(ran)} of {n + 1} images (true 0.5)")
    print(loop.report)


if __name__ == "__main__":
    main()
