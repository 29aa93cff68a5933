"""Truncated loop: stop when an energy budget is spent.

Estimates pi by Monte Carlo in batches, and stops when the loop has used its
energy budget: the estimate is as good as the energy allows.

    python examples/truncate.py [joules]
"""

from __future__ import annotations

import random
import sys

import nrgloops


def main() -> None:
    joules = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    budget = nrgloops.EnergyBudget(joules)  # the best meter here
    rng = random.Random(1)
    inside = total = 0
    loop = nrgloops.truncate(range(1_000_000), budget)
    for _batch in loop:
        for _ in range(1000):
            x, y = rng.random(), rng.random()
            inside += x * x + y * y <= 1.0
        total += 1000
    print(f"pi ~ {4 * inside / total:.5f} from {total} points")
    print(loop.report)


if __name__ == "__main__":
    main()
