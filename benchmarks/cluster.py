"""A fleet of NRG-loops under one power budget on Ray: even split against the keeper.

Six workers (Ray actors) each run an NRG-loop with a mixed ``Knob(1, 8, 1)`` over
their own simulated plant (``nrgloops.testing.SimulatedPlant``: a different power
per level for each, 3% noise, a 20 ms lag; "bursty" needs 70% less power from
the middle of the run on), sharing ``--per-worker`` W per worker through a
``PowerBudget``.  Three scenarios per repeat, in the same run:

- ``even``: the keeper with ``policy="even"``: every worker's share is the same.
- ``balance``: the keeper's default policy: slack moves to the capped workers.
- ``kill``: as ``balance`` without bursty's drop, and the worker "heavy" is killed
  (``ray.kill``) at half the run: its lease expires and the others take it.

Figures per scenario (all power *simulated*: the FakeMeters' energy, integrated
exactly by the C fake source): total power against the budget, on average after
every worker's first renewal and in the worst 1 s window; work done (sum of the
levels run, per iteration); for ``balance``, the time from bursty's drop until the
other workers' leases hold 90% of the watts it freed (and their power draws them);
for ``kill``, the time from the kill until the others' leases hold 90% of the
killed worker's lease above its floor.  The work is counted by the plants (the
level of each iteration, summed), so a machine busy with other work lowers it (the
iterations' sleeps overrun): the scenarios' order turns between repeats, the ratios
are within each repeat, and the level-seconds (the integral of the level over time:
the speed the leases buy, whatever the VM's delays) are reported beside it.
Prints min/median/max over the repeats and saves CSV + JSON + PNG under
``benchmarks/results/``.

    python benchmarks/cluster.py [--repeats 3] [--seconds 24] [--period 1] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from nrgloops import Knob, PowerCap, nrg_adapt
from nrgloops._machine import machine_line
from nrgloops.cluster import LeasedCap, PowerBudget
from nrgloops.testing import SimulatedPlant

RESULTS = Path(__file__).resolve().parent / "results"

# name: (idle W, W per level, (start of the drop as a share of the run, factor))
PLANTS: dict[str, tuple[float, float, tuple[float, float] | None]] = {
    "light": (4.0, 2.0, None),  # 6-20 W: always under an even share
    "small": (6.0, 2.5, None),  # 8.5-26 W
    "steady": (8.0, 6.0, None),  # 14-56 W
    "heavy": (6.0, 8.0, None),  # 14-70 W
    "wide": (10.0, 7.0, None),  # 17-66 W
    "bursty": (8.0, 8.0, (0.5, 0.3)),  # 16-72 W, then 4.8-21.6 W
}
KILLED = "heavy"
KILL_AT = 0.5
FLOOR_W = 4.0
RECORD_S = 0.05
# a sample: (time s, joules so far, lease W, work so far, level-seconds so far)
Row = tuple[float, float, float, float, float]
PUSH_S = 0.25


@ray.remote(num_cpus=0)
class Recorder:
    """Where workers push their samples (so a killed worker's survive it)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Row]] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, rows: list[Row]) -> None:
        self.rows.setdefault(name, []).extend(rows)

    def note(self, name: str, meta: dict[str, Any]) -> None:
        self.meta.setdefault(name, {}).update(meta)

    def take(self) -> tuple[dict[str, Any], dict[str, Any]]:
        rows, meta = self.rows, self.meta
        self.rows, self.meta = {}, {}
        return rows, meta


@ray.remote(num_cpus=0)
class Worker:
    """One NRG-loop over its own plant, holding a lease of the budget."""

    def __init__(self, name: str) -> None:
        self.name = name

    def warm(self) -> float:
        """A first short loop, so that no scenario pays for the imports and first calls."""
        plant = SimulatedPlant(lambda level: 1.0 + level, iteration_s=0.002)
        knob = Knob(1, 8, 1)
        with nrg_adapt(PowerCap(5.0, meter=plant.meter), knob=knob) as loop:
            for _ in range(200):
                loop.step()
                plant.iterate(knob.value)
        return plant.work

    def run(
        self,
        budget: PowerBudget,
        recorder: Any,
        start: float,
        seconds: float,
        seed: int,
        phases_on: bool,
    ) -> float:
        idle, per_level, drop = PLANTS[self.name]
        drop = drop if phases_on else None
        phases = [(drop[0] * seconds, drop[1])] if drop else []
        time.sleep(max(0.0, start - time.monotonic()))
        plant = SimulatedPlant(
            lambda level: idle + per_level * level,
            iteration_s=0.002,
            lag_s=0.02,
            noise=0.03,
            noise_s=0.05,
            phases=phases,
            seed=seed,
        )
        t0 = time.monotonic()
        knob = Knob(1, 8, 1)
        cap = LeasedCap(budget, meter=plant.meter, floor=FLOOR_W)
        recorder.note.remote(
            self.name,
            {"joined": time.monotonic(), "plant_start": t0, "period": cap.period, "floor": FLOOR_W},
        )
        if drop:
            recorder.note.remote(self.name, {"drop": t0 + drop[0] * seconds})
        end = start + seconds
        rows: list[Row] = []
        level_s = 0.0
        next_record = next_push = time.monotonic()
        names = plant.meter.total_domains
        with cap, nrg_adapt(cap, knob=knob) as loop:
            cap.follow(loop)
            while True:
                now = time.monotonic()
                if now >= next_record:
                    r = plant.meter.read()
                    joules = sum(r.joules[d] for d in names)
                    rows.append((r.time, joules, cap.watts, plant.work, level_s))
                    next_record = now + RECORD_S
                    if now >= next_push:
                        recorder.add.remote(self.name, rows)
                        rows, next_push = [], now + PUSH_S
                if now >= end:
                    break
                loop.step()
                level = knob.value
                plant.iterate(level)
                after = time.monotonic()
                level_s += level * (after - now)  # the speed bought, whatever the VM's delays
        recorder.add.remote(self.name, rows)
        return plant.work


def energy_at(rows: list[Row], t: float) -> float:
    """A worker's cumulative joules at time t (linear between samples; flat after the last:
    a killed worker draws nothing)."""
    if not rows or t <= rows[0][0]:
        return rows[0][1] if rows else 0.0
    if t >= rows[-1][0]:
        return rows[-1][1]
    lo, hi = 0, len(rows) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rows[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, j0, *_), (t1, j1, *_) = rows[lo], rows[hi]
    return j0 + (j1 - j0) * (t - t0) / (t1 - t0) if t1 > t0 else j1


def value_at(rows: list[Row], t: float, col: int) -> float:
    """The last sample's column at or before t (a lease or the work so far)."""
    v = rows[0][col] if rows else 0.0
    for row in rows:
        if row[0] > t:
            break
        v = row[col]
    return v


def grid(a: float, b: float, step: float) -> list[float]:
    n = int(math.floor((b - a) / step + 1e-9))
    return [a + k * step for k in range(n + 1)]


def first_time(times: list[float], values: list[float], threshold: float) -> float:
    for t, v in zip(times, values, strict=True):
        if v >= threshold:
            return t
    return math.nan


def scenario(
    policy: str,
    workers: dict[str, Any],
    recorder: Any,
    args: argparse.Namespace,
    budget_w: float,
    seed: int,
    kill: bool,
) -> dict[str, Any]:
    name = f"bench-{policy}-{'kill-' if kill else ''}{seed}"
    budget = PowerBudget(
        budget_w,
        name=name,
        period=args.period,
        floor=FLOOR_W,
        policy=policy,
        expect=len(workers),  # an even start: nobody takes it all before the others join
    )
    start = time.monotonic() + 1.0
    refs = {
        n: w.run.remote(budget, recorder, start, args.seconds, seed + i, not kill)
        for i, (n, w) in enumerate(workers.items())
    }
    t_kill = math.nan
    if kill:
        time.sleep(max(0.0, start + KILL_AT * args.seconds - time.monotonic()))
        t_kill = time.monotonic()
        ray.kill(workers[KILLED])
    works: dict[str, float] = {}
    for n, ref in refs.items():
        try:
            works[n] = float(ray.get(ref))
        except ray.exceptions.RayActorError:
            works[n] = math.nan  # the killed worker: its work is in its samples
    time.sleep(2 * PUSH_S)
    rows, meta = ray.get(recorder.take.remote())
    budget.shutdown()
    for n in rows:
        rows[n].sort()
        if math.isnan(works[n]):
            works[n] = rows[n][-1][3]
    end = start + args.seconds
    t_first = max(m["joined"] for m in meta.values()) + args.period  # every first renewal
    ts = grid(t_first, end, 0.1)
    total_j = [sum(energy_at(rows[n], t) for n in rows) for t in ts]
    avg_w = (total_j[-1] - total_j[0]) / (ts[-1] - ts[0])
    per_s = round(1.0 / 0.1)
    windows = [(total_j[k + per_s] - total_j[k]) / 1.0 for k in range(len(ts) - per_s)]
    out: dict[str, Any] = {
        "scenario": "kill" if kill else policy,
        "seed": seed,
        "budget_w": budget_w,
        "avg_power_w": avg_w,
        "avg_over_budget": avg_w / budget_w,
        "peak_1s_w": max(windows),
        "peak_1s_over_budget": max(windows) / budget_w,
        "windows_over_5pct": sum(w > 1.05 * budget_w for w in windows) / len(windows),
        "work": sum(works.values()),
        "level_s": sum(rows[n][-1][4] for n in rows),
        "work_per_worker": works,
        "freed_to_lease_s": math.nan,
        "freed_to_power_s": math.nan,
        "killed_to_lease_s": math.nan,
        "period_s": args.period,
    }
    fine = grid(start, end, RECORD_S)
    if policy == "balance" and not kill and "drop" in meta.get("bursty", {}):
        t_drop = meta["bursty"]["drop"]
        others = [n for n in rows if n != "bursty"]
        lease_b = [value_at(rows["bursty"], t, 2) for t in fine]
        before = statistics.median(v for t, v in zip(fine, lease_b, strict=True) if t < t_drop)
        after = statistics.median(v for t, v in zip(fine, lease_b, strict=True) if t > end - 3)
        freed = before - after
        lease_o = [sum(value_at(rows[n], t, 2) for n in others) for t in fine]
        o_before = statistics.median(
            v for t, v in zip(fine, lease_o, strict=True) if t_drop - 2 < t < t_drop
        )
        late = [(t, v) for t, v in zip(fine, lease_o, strict=True) if t >= t_drop]
        out["freed_w"] = freed
        out["freed_to_lease_s"] = (
            first_time([t for t, _ in late], [v for _, v in late], o_before + 0.9 * freed) - t_drop
        )
        # the others' power (0.5 s windows) drawing 90% of the freed watts
        half = [t for t in fine if t >= t_drop - 2 and t + 0.5 <= end]
        power_o = [
            sum(energy_at(rows[n], t + 0.5) - energy_at(rows[n], t) for n in others) / 0.5
            for t in half
        ]
        p_before = statistics.median(p for t, p in zip(half, power_o, strict=True) if t < t_drop)
        lt = [(t + 0.5, p) for t, p in zip(half, power_o, strict=True) if t >= t_drop]
        out["freed_to_power_s"] = (
            first_time([t for t, _ in lt], [p for _, p in lt], p_before + 0.9 * freed) - t_drop
        )
    if kill:
        others = [n for n in rows if n != KILLED]
        lease_k = value_at(rows[KILLED], t_kill, 2)
        freed = lease_k - FLOOR_W  # the floor stays booked until the keeper forgets it
        lease_o = [sum(value_at(rows[n], t, 2) for n in others) for t in fine]
        o_before = statistics.median(
            v for t, v in zip(fine, lease_o, strict=True) if t_kill - 2 < t < t_kill
        )
        late = [(t, v) for t, v in zip(fine, lease_o, strict=True) if t >= t_kill]
        out["killed_lease_w"] = lease_k
        out["killed_to_lease_s"] = (
            first_time([t for t, _ in late], [v for _, v in late], o_before + 0.9 * freed) - t_kill
        )
    out["series"] = {
        "t": [t - start for t in ts[per_s:]],  # each window at its end
        "total_1s_w": windows,
        "leases": {  # (NaN once a killed worker's samples end)
            n: [
                value_at(rows[n], t, 2) if t <= rows[n][-1][0] + PUSH_S else math.nan
                for t in fine[:: int(0.25 / RECORD_S)]
            ]
            for n in rows
        },
        "lease_t": [t - start for t in fine[:: int(0.25 / RECORD_S)]],
        "t_kill": t_kill - start if kill else None,
        "t_drop": meta["bursty"]["drop"] - start if "drop" in meta.get("bursty", {}) else None,
    }
    return out


def spread(values: list[float]) -> str:
    good = [v for v in values if v == v]
    if not good:
        return "n/a"
    return f"{min(good):.3f} / {statistics.median(good):.3f} / {max(good):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--period", type=float, default=1.0, help="renewal period, s")
    ap.add_argument("--per-worker", type=float, default=40.0, help="budget per worker, W")
    ap.add_argument("--quick", action="store_true", help="1 repeat of 16 s")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.seconds = 1, 16.0
    budget_w = args.per_worker * len(PLANTS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    recorder = Recorder.remote()  # type: ignore[attr-defined]
    workers = {n: Worker.remote(n) for n in PLANTS}  # type: ignore[attr-defined]
    results: list[dict[str, Any]] = []
    print(f"machine: {machine_line()}")
    print(
        f"{len(PLANTS)} workers, budget {budget_w:g} W, period {args.period:g} s, "
        f"{args.seconds:g} s per scenario, {args.repeats} repeats (power: simulated)"
    )
    ray.get([w.warm.remote() for w in workers.values()])
    order = [("even", False), ("balance", False), ("balance", True)]
    for r in range(args.repeats):
        # the order turns from repeat to repeat: a slow spell of the machine (or
        # the first run's start) does not always fall on the same scenario
        for policy, kill in order[r % 3 :] + order[: r % 3]:
            res = scenario(policy, workers, recorder, args, budget_w, 100 * r, kill)
            results.append(res)
            print(
                f"  repeat {r} {res['scenario']:8s} avg {res['avg_power_w']:6.1f} W "
                f"({res['avg_over_budget']:.3f} of budget), peak 1 s {res['peak_1s_w']:6.1f} W "
                f"({res['peak_1s_over_budget']:.3f}), work {res['work']:.0f}, "
                f"level-s {res['level_s']:.0f}"
            )
            if kill:
                workers[KILLED] = Worker.remote(KILLED)  # type: ignore[attr-defined]
                ray.get(workers[KILLED].warm.remote())
    ray.shutdown()

    by: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        by.setdefault(res["scenario"], []).append(res)
    ratios = [
        b["work"] / e["work"] for b, e in zip(by["balance"], by["even"], strict=True) if e["work"]
    ]
    speed = [
        b["level_s"] / e["level_s"]
        for b, e in zip(by["balance"], by["even"], strict=True)
        if e["level_s"]
    ]
    per = args.period
    summary = {
        "work_ratio_balance_over_even": ratios,
        "level_s_ratio_balance_over_even": speed,
        "freed_to_lease_periods": [x["freed_to_lease_s"] / per for x in by["balance"]],
        "freed_to_power_periods": [x["freed_to_power_s"] / per for x in by["balance"]],
        "killed_to_lease_s": [x["killed_to_lease_s"] for x in by["kill"]],
    }
    print("\nmin / median / max over repeats (simulated power):")
    for sc, rows in by.items():
        print(
            f"  {sc:8s} avg/budget {spread([x['avg_over_budget'] for x in rows])}   "
            f"peak 1 s/budget {spread([x['peak_1s_over_budget'] for x in rows])}   "
            f"1 s windows > 5% over {spread([x['windows_over_5pct'] for x in rows])}"
        )
    print(f"  work, balance / even: {spread(ratios)}  (target >= 1.15)")
    print(
        f"  level-seconds (the speed the leases buy, without the VM's delays), "
        f"balance / even: {spread(speed)}"
    )
    print(
        f"  a freed share in others' leases after {spread(summary['freed_to_lease_periods'])} "
        f"periods, in their power after {spread(summary['freed_to_power_periods'])} periods "
        "(target <= 3)"
    )
    print(
        f"  a killed worker's lease in others' leases after "
        f"{spread(summary['killed_to_lease_s'])} s (expiry {3 * per:g} s + renewals)"
    )

    RESULTS.mkdir(exist_ok=True)
    table = [
        {k: v for k, v in x.items() if k not in ("series", "work_per_worker")} for x in results
    ]
    with open(RESULTS / "cluster.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for row in table for k in row}))
        w.writeheader()
        w.writerows(table)
    doc = {
        "machine": machine_line(),
        "power": "simulated (SimulatedPlant driving FakeMeters)",
        "workers": {
            n: {"idle_w": p[0], "w_per_level": p[1], "drop": p[2]} for n, p in PLANTS.items()
        },
        "budget_w": budget_w,
        "period_s": args.period,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "summary": summary,
        "runs": [{k: v for k, v in x.items() if k != "series"} for x in results],
    }
    (RESULTS / "cluster.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    plot(results, budget_w, RESULTS / "cluster.png")
    print(f"\nsaved {RESULTS / 'cluster.csv'}, cluster.json, cluster.png")


def plot(results: list[dict[str, Any]], budget_w: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {x["scenario"]: x for x in results}  # the last repeat of each
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    for sc in ("even", "balance", "kill"):
        s = last[sc]["series"]
        ax.plot(s["t"], s["total_1s_w"], label=f"{sc}: work {last[sc]['work']:.0f}")
    ax.axhline(budget_w, color="k", ls="--", lw=1, label=f"budget {budget_w:g} W")
    ax.axhline(1.05 * budget_w, color="r", ls=":", lw=1, label="budget + 5%")
    ax.set_ylabel("total power, 1 s windows\n(W, simulated; at the window's end)")
    ax.legend(fontsize=8, loc="lower right")
    for ax, sc in ((axes[1], "balance"), (axes[2], "kill")):
        s = last[sc]["series"]
        for n, leases in s["leases"].items():
            ax.plot(s["lease_t"][: len(leases)], leases, label=n)
        if s["t_drop"] is not None:
            ax.axvline(s["t_drop"], color="grey", ls=":", lw=1)
        if s["t_kill"] is not None:
            ax.axvline(s["t_kill"], color="r", ls=":", lw=1)
        ax.set_ylabel(f"{sc}: lease per worker (W)")
        ax.legend(fontsize=7, ncol=3)
    axes[-1].set_xlabel("time since start (s)")
    fig.suptitle(f"{len(PLANTS)} NRG-loops under one budget on Ray ({machine_line()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
