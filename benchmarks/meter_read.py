"""What one energy reading costs, ours against pyRAPL's way; what s.power()
costs; what the sampler thread costs at 1 kHz.

All readers read the same fake trees in tmpfs (/dev/shm), each with two
counters (package-0 and dram-0 of a one-socket Xeon):

* msr: our counter source on a fake /dev/cpu/0/msr (pread at the address);
* powercap: our counter source on a fake /sys/class/powercap (pread of
  energy_uj on a descriptor opened once);
* pyRAPL: pyRAPL 0.2.3.1's own ``Sensor.energy()`` on the same powercap tree
  (its file opens redirected into the tree at setup; its read path,
  seek(0) + readline() + float() per counter, untouched), if pyRAPL imports;
* open/read/close: the naive way (open, read, close energy_uj per reading),
  as many scripts do.

A real /dev/cpu/*/msr read is an IPI to the target CPU and a sysfs read
makes the kernel read the MSR, so on real hardware every row grows by the
same kernel cost per counter; these figures isolate the user-space cost of
each way of reading, which is what a reader can change.

Every figure is the min / median / max over repeats (25 loops of calls for
the per-call costs, 3 runs for the sampler thread's CPU share), measured on
this machine.

Run:  python benchmarks/meter_read.py [--quick]
Writes benchmarks/results/meter_read.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nrgloops import Sampler
from nrgloops._fakes import msr_tree as mt
from nrgloops._fakes import powercap_tree as pt
from nrgloops._ffi import ffi, lib
from nrgloops._machine import machine_info, machine_line
from nrgloops.meters.msr import open_msr
from nrgloops.meters.powercap import open_powercap
from nrgloops.testing import FakeMeter

HERE = Path(__file__).resolve().parent


Stats = dict[str, float]  # {"min": ..., "median": ..., "max": ...}


def stats(values: list[float]) -> Stats:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def per_call_ns(fn: Callable[[], Any], n: int, repeats: int = 25) -> Stats:
    """Over ``repeats`` loops of n calls: the mean time of one call, ns."""
    for _ in range(n):  # warm up (caches, branch predictors, CPU frequency)
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        times.append((time.perf_counter_ns() - t0) / n)
    return stats(times)


def per_stmt_ns(stmt: str, env: dict[str, Any], n: int, repeats: int = 25) -> Stats:
    """Like timeit: the statement inlined in a tight loop, ns per statement."""
    import timeit

    timeit.repeat(stmt, globals=env, number=n, repeat=2)  # warm up
    return stats([t / n * 1e9 for t in timeit.repeat(stmt, globals=env, number=n, repeat=repeats)])


def machine() -> dict[str, Any]:
    return {**machine_info(), "tmpfs": "/dev/shm", "load_average_1min": os.getloadavg()[0]}


def raw_c_read(meter: Any, n: int) -> tuple[Stats, Stats]:
    """(ns per nrg_source_read called from Python, ns of the cffi call itself)."""
    src = meter._source
    t = ffi.new("double *")
    buf = ffi.new("double[]", len(meter.domains))
    read = lib.nrg_source_read
    domains = lib.nrg_source_domains
    env = {"read": read, "domains": domains, "src": src, "t": t, "buf": buf}
    full = per_stmt_ns("read(src, t, buf)", env, n)
    call = per_stmt_ns("domains(src)", env, n)  # a C function that does nothing
    return full, call


def sampler_cpu(meter: Any, seconds: float, repeats: int = 3) -> dict[str, Any]:
    """Process CPU time over wall time, main thread asleep, sampler at 1 kHz:
    min / median / max over ``repeats`` runs."""
    runs = [_sampler_cpu_once(meter, seconds) for _ in range(repeats)]
    return {k: stats([r[k] for r in runs]) for k in runs[0]}


def _sampler_cpu_once(meter: Any, seconds: float) -> dict[str, float]:
    c0, w0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    idle = (time.process_time() - c0) / (time.monotonic() - w0)
    with Sampler(meter, period=0.001) as s:
        time.sleep(0.05)
        n0 = s.samples
        c0, w0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
        rate = (s.samples - n0) / wall
        errors = s.errors
    return {"cpu_share": cpu / wall, "idle_share": idle, "rate_hz": rate, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    # loops of n calls, best of 25: short loops make the best one likely to
    # fall between the scheduler's interruptions on a busy machine
    n = 4_000 if args.quick else 40_000
    cpu_s = 1.0 if args.quick else 3.0

    base = Path(tempfile.mkdtemp(prefix="nrgloops-bench-", dir="/dev/shm"))
    results: dict[str, Any] = {"machine": machine(), "iterations": n, "rows_ns": {}}
    rows = results["rows_ns"]
    try:
        msr_tree = mt.intel_server(base / "msr", packages=1)
        pc_tree = pt.server(base / "pc", packages=1)
        msr_meter = open_msr(**msr_tree.options())
        pc_meter = open_powercap(pc_tree.root)
        assert msr_meter.domains == pc_meter.domains == ("package-0", "dram-0")

        for name, meter in (("msr", msr_meter), ("powercap", pc_meter)):
            full, call = raw_c_read(meter, n)
            rows[f"{name}: C read (nrg_source_read via cffi)"] = full
            rows[f"{name}: C read, cffi call overhead removed"] = {
                k: v - call["median"] for k, v in full.items()
            }
            rows[f"{name}: meter.read() from Python"] = per_call_ns(meter.read, n)
        results["cffi_call_ns"] = call

        try:
            sensor = pt.pyrapl_sensor(pc_tree, packages=1)
            assert len([v for v in sensor.energy() if v >= 0]) == 2
            rows["pyRAPL: Sensor.energy() (pyRAPL 0.2.3.1 itself)"] = per_call_ns(sensor.energy, n)
            results["pyrapl"] = "pyRAPL itself"
        except ImportError:
            results["pyrapl"] = "not installed: row omitted"

        files = [str(pc_tree.paths[z] / "energy_uj") for z in ("intel-rapl:0", "intel-rapl:0:0")]

        def open_read_close() -> list[float]:
            out = []
            for p in files:
                with open(p) as f:
                    out.append(float(f.read()))
            return out

        rows["naive: open/read/close energy_uj per reading"] = per_call_ns(open_read_close, n // 4)

        with Sampler(msr_meter, period=0.001) as s:
            s.power(0.1)  # the first call watches the window; later ones read it
            slot = s.watch(0.1)
            env = {"s": s, "pub": s.published, "slot": slot}
            rows["s.power(0.1) on a running sampler"] = per_stmt_ns("s.power(0.1)", env, n * 5)
            rows["s.published[slot] (the per-iteration read)"] = per_stmt_ns(
                "pub[slot]", env, n * 5
            )
            rows["empty statement (timeit loop overhead)"] = per_stmt_ns("pass", env, n * 5)

            class Bare:
                def power(self, window: float = 0.1, domain: str | None = None) -> float:
                    return 0.0

            env["bare"] = Bare()
            rows["reference: a Python method that returns 0.0"] = per_stmt_ns(
                "bare.power(0.1)", env, n * 5
            )

        results["sampler_1khz"] = {
            "msr": sampler_cpu(msr_meter, cpu_s),
            "powercap": sampler_cpu(pc_meter, cpu_s),
            # a source whose read is one clock_gettime: the cost of the
            # thread's 1 kHz timer wake-ups alone, the floor under the others
            "FakeMeter (wake-up floor)": sampler_cpu(FakeMeter(40.0), cpu_s),
        }
        results["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)

    report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "meter_read.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "meter_read.png")
    print(f"\nwrote {args.out / 'meter_read.json'} and {args.out / 'meter_read.png'}")


def _mmm(x: Stats, fmt: str = "9.0f") -> str:
    return f"{x['min']:{fmt}} {x['median']:{fmt}} {x['max']:{fmt}}"


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    rows = results["rows_ns"]
    print(
        f"machine: {machine_line(m)}, Linux {m['kernel']}; fake trees in {m['tmpfs']}; "
        "2 counters per reading; "
        f"load average {m['load_average_1min']:.2f} -> {m.get('load_average_1min_end', 0):.2f}"
    )
    print("times: 25 runs of a loop of calls (as timeit), ns per call, measured")
    print(f"\n{'one reading (package-0 + dram-0)':58s} {'min':>9s} {'median':>9s} {'max':>9s}")
    for name, ns in rows.items():
        print(f"{name:58s} {_mmm(ns)}")
    pyrapl = rows.get("pyRAPL: Sensor.energy() (pyRAPL 0.2.3.1 itself)")
    naive = rows["naive: open/read/close energy_uj per reading"]
    print("\nratios of medians (how many times cheaper than the other way; target >= 5x):")
    for ours in (
        "msr: C read (nrg_source_read via cffi)",
        "powercap: C read (nrg_source_read via cffi)",
        "msr: meter.read() from Python",
        "powercap: meter.read() from Python",
    ):
        line = f"  {ours:45s}"
        if pyrapl:
            line += f" vs pyRAPL {pyrapl['median'] / rows[ours]['median']:6.1f}x"
        line += f"   vs open/read/close {naive['median'] / rows[ours]['median']:6.1f}x"
        print(line)
    power = rows["s.power(0.1) on a running sampler"]
    pub = rows["s.published[slot] (the per-iteration read)"]
    print(
        f"\ns.power(0.1): {_mmm(power, '.0f')} ns min/median/max per call (target < 150 ns); "
        f"s.published[slot]: {_mmm(pub, '.0f')} ns (timeit, loop overhead included)"
    )
    for name, c in results["sampler_1khz"].items():
        share = {k: v * 100 for k, v in c["cpu_share"].items()}
        idle = {k: v * 100 for k, v in c["idle_share"].items()}
        print(
            f"sampler at 1 kHz on {name}: {_mmm(share, '.2f')} % of one core min/median/max "
            f"(target < 2%; idle process {_mmm(idle, '.2f')} %), "
            f"{c['rate_hz']['median']:.0f} samples/s, {c['errors']['max']:.0f} errors"
        )


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG")
        return
    rows = {
        k: v
        for k, v in results["rows_ns"].items()
        if "overhead" not in k and not k.startswith("reference")
    }
    names = list(rows)
    med = {k: rows[k]["median"] for k in names}
    lo = [med[k] - rows[k]["min"] for k in names]
    hi = [rows[k]["max"] - med[k] for k in names]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.5))
    colors = [
        "#2a7"
        if k.startswith(("msr", "powercap"))
        else "#c44"
        if k.startswith(("pyRAPL", "naive"))
        else "#48c"
        for k in names
    ]
    ax.barh(names, [med[k] for k in names], color=colors, xerr=[lo, hi], capsize=3)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("ns per call, measured: median, bars min-max (log scale)")
    m = results["machine"]
    ax.set_title(
        f"Cost of one reading (2 counters, fake trees in tmpfs)\n{machine_line(m)}", fontsize=10
    )
    for i, k in enumerate(names):
        ax.text(rows[k]["max"], i, f" {med[k]:.0f} ns", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
