"""Adapted loop, decorator form (NRG_ADAPT / NRG_ALTERNATE).

A server answers one request every 2 ms.  The full answer keeps a core busy
the whole 2 ms; the degraded one takes a quarter of that.  Under a power cap
half-way between the two, the library runs the full answer while the
windowed power is under the cap and the degraded one while it is over.

    python examples/adapt.py [seconds]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import nrgloops

PERIOD = 0.002  # one request every 2 ms


def burn(seconds: float) -> int:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def serve(handler: Callable[[int], object], seconds: float) -> None:
    """Call handler(i) once per PERIOD for `seconds`."""
    t = time.perf_counter()
    end = t + seconds
    i = 0
    while t < end:
        handler(i)
        i += 1
        t += PERIOD
        time.sleep(max(0.0, t - time.perf_counter()))


def power_of(
    handler: Callable[[int], object], meter: nrgloops.Meter, seconds: float = 0.5
) -> float:
    with nrgloops.Sampler(meter) as s:
        serve(handler, seconds)
        return s.energy() / seconds


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    # The best meter here.  Where there is no energy counter it falls back to
    # the model meter (an estimate); scope="process" has it count only this
    # program's CPU time, so that other programs do not blur the example.
    meter = nrgloops.open_meter(scope="process")
    full_w = power_of(lambda i: burn(PERIOD), meter)
    degraded_w = power_of(lambda i: burn(PERIOD / 4), meter)
    cap = nrgloops.PowerCap((full_w + degraded_w) / 2, meter=meter)
    print(
        f"full answer: {full_w:.1f} W, degraded: {degraded_w:.1f} W ({meter.label}); "
        f"cap {cap.watts:.1f} W over {cap.window:g} s"
    )

    @nrgloops.nrg_adapt(cap)
    def answer(i: int) -> int:
        return burn(PERIOD)  # full variant

    @nrgloops.nrg_alternate(answer)
    def answer_degraded(i: int) -> int:
        return burn(PERIOD / 4)  # runs while over the cap

    with answer:  # the loop: from here to the end of the block
        serve(answer, seconds)
    print(answer.report)


if __name__ == "__main__":
    main()
