"""Substring search under a soft power cap: the NRG-Loops paper's example.

Each iteration looks up one string in a text with ``threads.value`` threads;
the library moves the thread count to hold the cap (the paper's ramp: one
step down while over the cap, one step up while under).  Three changed lines
against the plain loop are marked ``# NRG``.

    pip install "nrgloops[bench]"   # the corpus and the GIL-free search kernel
    python examples/substring_search.py [CAP_W]

Without CAP_W the cap is put halfway between the idle power and the power of
all cores busy (estimated ones on a machine with no energy counter: the
report says which).
"""

from __future__ import annotations

import os
import sys
import time

import nrgloops
from nrgloops.bench import Searcher, make_corpus, make_patterns


def main() -> None:
    corpus = make_corpus(8 << 20, seed=1)  # 8 MiB of text
    strings = make_patterns(corpus, 3000, seed=1)
    cores = len(os.sched_getaffinity(0))
    meter = nrgloops.open_meter("auto")
    if len(sys.argv) > 1:
        cap_w = float(sys.argv[1])
    else:  # halfway between idle and all cores busy, as the meter sees them
        with nrgloops.Sampler(meter) as sampler, Searcher(corpus, cores) as probe:
            time.sleep(0.5)
            idle = sampler.power(0.5)
            t = time.monotonic()
            while time.monotonic() - t < 1.0:
                probe.count(strings[0], cores)
            busy = sampler.power(0.5)
        cap_w = round((idle + busy) / 2, 1)
        print(f"idle {idle:.1f} W, all {cores} cores busy {busy:.1f} W ({meter.label})")

    cap = nrgloops.PowerCap(cap_w, meter=meter)
    step = 2 if cores >= 4 else 1  # the paper's -2/+2 threads, 1 on small machines
    threads = nrgloops.Knob(step, cores - cores % step, step, policy="step")  # NRG
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
