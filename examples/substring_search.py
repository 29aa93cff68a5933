"""Substring search under a soft power cap: the NRG-Loops paper's example.

Each iteration looks up one string in a text with ``threads.value`` threads;
the library moves the thread count to hold the cap.  The knob is the
library's default, which alternates the two thread counts around the cap so
that the average power sits just under it (``policy="step"`` would be the
paper's ramp: one step down while over the cap, one step up while under).
Three changed lines against the plain loop are marked ``# NRG``.

    pip install "nrgloops[bench]"   # the corpus and the GIL-free search kernel
    python examples/substring_search.py [CAP_W]

Without CAP_W the cap is put halfway between the power of the knob's bottom
level (the fewest threads it runs, measured first) and the power of all
cores busy: a cap the loop can hold.  A cap under the bottom level cannot be
held by any thread count (the loop runs at the bottom and its report says by
how much it missed).  Powers are estimated on a machine with no energy
counter: the report says which.
"""

from __future__ import annotations

import os
import sys
import time

import nrgloops
from nrgloops.bench import Searcher, make_corpus, make_patterns


def main() -> None:
    corpus = make_corpus(8 << 20, seed=1)  # 8 MiB of text
    strings = make_patterns(corpus, 12000, seed=1)  # a few seconds: many control windows
    cores = len(os.sched_getaffinity(0))
    step = 2 if cores >= 4 else 1  # the paper's -2/+2 threads, 1 on small machines
    lo, hi = step, cores - cores % step
    meter = nrgloops.open_meter("auto")
    if len(sys.argv) > 1:
        cap_w = float(sys.argv[1])
    else:  # halfway between the knob's bottom and top levels, as the meter sees them
        with nrgloops.Sampler(meter) as sampler, Searcher(corpus, cores) as probe:
            levels = []
            for n in (lo, hi):
                t = time.monotonic()
                while time.monotonic() - t < 1.0:
                    probe.count(strings[0], n)
                levels.append(sampler.power(0.5))
        bottom, top = levels
        cap_w = round((bottom + top) / 2, 1)
        print(
            f"{lo} thread(s) {bottom:.1f} W, {hi} threads {top:.1f} W ({meter.label}): "
            f"cap {cap_w:g} W"
        )

    cap = nrgloops.PowerCap(cap_w, meter=meter)
    threads = nrgloops.Knob(lo, hi, step)  # NRG: the default policy, mixed levels
    found = 0
    search = Searcher(corpus, max_threads=cores)
    with search, nrgloops.nrg_adapt(cap, knob=threads) as loop:  # NRG
        for s in strings:
            loop.step()  # NRG: one iteration; the library moves threads.value
            found += search.count(s, int(threads.value))
    print(f"{len(strings)} strings, {found} matches, cap {cap_w:g} W")
    print(loop.report)


if __name__ == "__main__":
    main()
