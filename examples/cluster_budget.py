"""Four NRG-loops on Ray sharing one power budget (python examples/cluster_budget.py).

Each worker is a Ray actor running an NRG-loop with a mixed knob over its own
simulated plant: a different power per knob level for each, and "bursty" needs
60% less from halfway on.  They share 120 W through a PowerBudget: the light
workers take what they need and the keeper moves what they leave -- and what
bursty frees -- to the workers that are capped.  Every second this prints each
worker's lease, its power over that second and its work so far (all power
simulated), then the totals.
"""

from __future__ import annotations

import time

import ray

from nrgloops import Knob, nrg_adapt
from nrgloops.cluster import LeasedCap, PowerBudget
from nrgloops.testing import SimulatedPlant

BUDGET_W = 120.0
SECONDS = 16.0
PLANTS = {  # name: (idle W, W per knob level, factor from halfway on)
    "light": (4.0, 2.0, 1.0),  # 6-20 W at levels 1-8
    "steady": (8.0, 6.0, 1.0),  # 14-56 W
    "heavy": (6.0, 8.0, 1.0),  # 14-70 W
    "bursty": (8.0, 7.0, 0.4),  # 15-64 W, then 6-26 W
}


@ray.remote(num_cpus=0)  # it mostly sleeps: it takes no CPU from the others
class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        idle, per_level, factor = PLANTS[name]
        self.plant = SimulatedPlant(
            lambda level: idle + per_level * level,
            iteration_s=0.002,
            noise=0.03,
            phases=[(SECONDS / 2, factor)] if factor != 1.0 else [],
        )
        self.cap: LeasedCap | None = None
        self.last = (time.monotonic(), 0.0)

    def run(self, seconds: float) -> float:
        knob = Knob(1, 8, 1)
        self.cap = LeasedCap("fleet", meter=self.plant.meter, floor=4.0)
        with self.cap, nrg_adapt(self.cap, knob=knob) as loop:
            self.cap.follow(loop)  # report the loop's demand (its model at full speed)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                loop.step()
                self.plant.iterate(knob.value)
        return self.plant.work

    def progress(self) -> tuple[float, float, float]:
        """(lease W, power W over the last call's interval, work so far)."""
        r = self.plant.meter.read()
        joules = sum(r.joules.values())
        (t0, j0), self.last = self.last, (r.time, joules)
        power = (joules - j0) / (r.time - t0) if r.time > t0 else 0.0
        lease = self.cap.watts if self.cap is not None else 0.0
        return lease, power, self.plant.work


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    budget = PowerBudget(BUDGET_W, name="fleet", period=1.0, floor=4.0, expect=len(PLANTS))
    # two calls at once: progress() runs beside run()
    workers = {n: Worker.options(max_concurrency=2).remote(n) for n in PLANTS}  # type: ignore[attr-defined]
    runs = [w.run.remote(SECONDS) for w in workers.values()]
    print(f"budget {BUDGET_W:g} W shared by {len(workers)} workers (power: simulated)")
    print("  t   " + "".join(f"{n:>22s}" for n in workers) + "      total W")
    print("  s   " + "".join(f"{'lease/power W  work':>22s}" for _ in workers))
    start = time.monotonic()
    for _ in range(int(SECONDS)):
        time.sleep(1.0)
        rows = ray.get([w.progress.remote() for w in workers.values()])
        cells = "".join(f"{lease:7.1f}/{power:5.1f} {work:8.0f}" for lease, power, work in rows)
        total_lease = sum(r[0] for r in rows)
        total_power = sum(r[1] for r in rows)
        t = time.monotonic() - start
        print(f"{t:4.0f}  {cells}   {total_power:5.1f} of {total_lease:5.1f} leased")
    works = ray.get(runs)
    print(f"work done: {dict(zip(workers, (round(w) for w in works), strict=True))}")
    print(f"total work {sum(works):.0f}; the keeper now: {budget.status()['reserved_w']:.1f} W")
    budget.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
