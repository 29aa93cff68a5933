"""Overhead of the NRG-loops per iteration, against a bare Python function call.

Measures, in one run and interleaved (so that a noisy neighbour hits every
variant alike), the time per iteration of a loop calling a trivial function
directly, through ``nrg_adapt`` (decorator, context manager, with a Knob),
and through ``truncate`` / ``perforate``; prints the differences in ns
against the 300 ns target and saves JSON and a PNG under
``benchmarks/results/`` named after the machine.

    python benchmarks/overhead.py [--rounds 40] [--n 100000] [--meter auto]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nrgloops
from nrgloops import EnergyBudget, Knob, PowerCap, _checks, nrg_adapt, perforate, truncate
from nrgloops._machine import machine_line
from nrgloops.loops import AdaptedFunction

TARGET_NS = 300.0
RESULTS = Path(__file__).resolve().parent / "results"


def body(x: int) -> int:
    return x


Case = Callable[[range], None]


def make_cases(meter: str) -> tuple[dict[str, Case], list[AdaptedFunction[..., int]]]:
    """The loops to time, and the adapted functions whose loops to open first."""
    high = PowerCap(1e9, meter=meter)  # never over: the full variant runs
    low = PowerCap(1e-9, meter=meter)  # always over: the alternate runs

    def bare(r: range) -> None:
        for i in r:
            body(i)

    adapted = nrg_adapt(high)(body)
    adapted.alternate(body)

    def decorator(r: range) -> None:
        for i in r:
            adapted(i)

    adapted_over = nrg_adapt(low)(body)
    adapted_over.alternate(body)

    def decorator_over(r: range) -> None:
        for i in r:
            adapted_over(i)

    knob = Knob(1, 16, 1)
    knobbed = nrg_adapt(high, knob=knob)(body)

    def decorator_knob(r: range) -> None:
        for i in r:
            knobbed(i)

    def context(r: range) -> None:
        with nrg_adapt(high) as loop:
            for i in r:
                if loop.under_cap:
                    body(i)
                else:
                    body(i)

    def context_knob(r: range) -> None:
        with nrg_adapt(high, knob=Knob(1, 16, 1)) as loop:
            for i in r:
                loop.step()
                body(i)

    budget = EnergyBudget(1e12, meter=meter)

    def truncated(r: range) -> None:
        for i in truncate(r, budget):
            body(i)

    def perforated(r: range) -> None:
        for i in perforate(r, high, rate=0.5):
            body(i)

    cases: dict[str, Case] = {
        "bare call": bare,
        "nrg_adapt decorator": decorator,
        "nrg_adapt decorator, over cap": decorator_over,
        "nrg_adapt decorator + Knob": decorator_knob,
        "nrg_adapt context manager": context,
        "nrg_adapt context + Knob": context_knob,
        "truncate": truncated,
        "perforate": perforated,
    }
    return cases, [adapted, adapted_over, knobbed]


def machine() -> str:
    return machine_line()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--n", type=int, default=100_000, help="iterations per measurement")
    ap.add_argument("--meter", default="auto", help="meter kind (the cost does not depend on it)")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args()
    try:
        _checks.count("--rounds", a.rounds, lo=1)
        _checks.count("--n", a.n, lo=1)
    except ValueError as exc:
        ap.error(str(exc))
    cases, adapted = make_cases(a.meter)
    r = range(a.n)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for f in adapted:
            f.__enter__()  # start their loops outside the timing
        for _ in range(a.rounds):
            for name, fn in cases.items():
                t = time.perf_counter()
                fn(r)
                samples[name].append((time.perf_counter() - t) / a.n * 1e9)
    finally:
        for f in adapted:
            f.close()
    best = {k: min(v) for k, v in samples.items()}
    median = {k: statistics.median(v) for k, v in samples.items()}
    worst = {k: max(v) for k, v in samples.items()}
    base_b, base_m, base_w = best["bare call"], median["bare call"], worst["bare call"]
    meter = nrgloops.PowerCap(1.0, meter=a.meter).meter
    print(f"machine: {machine()}")
    print(
        f"meter: {meter.kind} ({meter.label}); {a.rounds} rounds of {a.n} iterations, "
        "interleaved; best, median and worst round per iteration (measured)"
    )
    print(
        f"{'loop':32s} {'best ns':>9s} {'overhead':>9s} {'median ns':>10s} {'overhead':>9s}"
        f" {'worst ns':>9s} {'overhead':>9s}  vs 300 ns target"
    )
    rows = []
    for k in cases:
        ob, om, ow = best[k] - base_b, median[k] - base_m, worst[k] - base_w

        def judge(x: float) -> str:
            return "under" if x < TARGET_NS else f"OVER by {x - TARGET_NS:.0f} ns"

        verdict = "" if k == "bare call" else f"best {judge(ob)}, median {judge(om)}"
        print(
            f"{k:32s} {best[k]:9.1f} {ob:9.1f} {median[k]:10.1f} {om:9.1f} "
            f"{worst[k]:9.1f} {ow:9.1f}  {verdict}"
        )
        rows.append(
            {
                "loop": k,
                "best_ns": best[k],
                "median_ns": median[k],
                "overhead_best_ns": ob,
                "overhead_median_ns": om,
                "worst_ns": worst[k],
                "overhead_worst_ns": ow,
            }
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = socket.gethostname().replace("/", "_")
    out = {
        "machine": machine(),
        "meter": meter.kind,
        "measured_meter": meter.measured,
        "rounds": a.rounds,
        "n": a.n,
        "target_ns": TARGET_NS,
        "results": rows,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS / f"overhead-{tag}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")
    if not a.no_plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib missing: no PNG (pip install matplotlib)", file=sys.stderr)
            return 0
        names = [k for k in cases if k != "bare call"]
        fig, ax = plt.subplots(figsize=(8, 4))
        y = range(len(names))
        ax.barh(
            [i - 0.2 for i in y],
            [best[k] - base_b for k in names],
            height=0.4,
            label="best of the rounds",
        )
        ax.barh(
            [i + 0.2 for i in y],
            [median[k] - base_m for k in names],
            height=0.4,
            label="median of the rounds",
        )
        ax.set_yticks(list(y), names)
        ax.axvline(TARGET_NS, color="red", linestyle="--", label="300 ns target")
        ax.set_xlabel("overhead per iteration vs a bare call (ns)")
        ax.set_title(f"nrgloops overhead, {machine()}", fontsize=8)
        ax.invert_yaxis()
        ax.legend()
        fig.tight_layout()
        png = RESULTS / f"overhead-{tag}.png"
        fig.savefig(png, dpi=120)
        print(f"saved {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
