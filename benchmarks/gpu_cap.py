"""Benchmark: holding a GPU power cap at a fixed request rate.

For the accelerator machine (an NVIDIA H100/H200, read through NVML).  At a
fixed request rate it first measures, briefly, the power of each model
variant alone (idle, full model, early exit, and the full model run back to
back), picks 2-3 caps between the variants' levels, and runs:

  uncapped    the full model for every batch;
  nrg-loop    the service of examples/gpu_inference_cap.py (gpu_harness.py's
              serve_under_cap): a share of the batches by the full model, the
              rest by the early exit, the share set by a knob on the measured
              power (nrg_adapt / nrg_alternate);
  bare-switch the paper's NRG_ADAPT / NRG_ALTERNATE as they are (the full
              model while the windowed power is under the cap, else the early
              exit), at the middle cap only;
  duty-cycle  what an application does without nrgloops: the full model only,
              run back to back for a fraction d of every 50 ms and idle for the
              rest, d = (cap - idle) / (busy - idle) from the calibration; it
              falls behind when d x its throughput is under the rate, and then
              queues and drops requests (a batch waiting longer than the
              deadline is dropped).

Columns: mode, cap_w, avg_power_w (steady: after the first --settle seconds),
over_100ms (steady: the share of time the 100 ms windowed power was over the
cap by more than 5%, nrgloops.report.WindowStats; over_100ms_instant: the
same by the instant-power meter, a cross-check), on_time
(share of the arrived requests served within the deadline), full_quality
(share of the served batches by the full model), energy per request (J),
dropped and queued requests.  It writes gpu_cap.csv, gpu_cap.json and
gpu_cap.png under $OUT when set, else benchmarks/results/, and prints
PASS/FAIL for what must hold:

  the nrg-loop's average power within 5% of the cap; under 10% of its time
  with the 100 ms windowed power over the cap by more than 5%; every request
  on time; and the duty-cycled full model at the same cap falling behind.
  A FAIL makes the exit status 1.

Nothing changes the GPU's settings: NVML is only read.

Here, without a GPU: ``--dry-run`` runs the same code on a SIMULATED GPU (a
fake libnvidia-ml built from tests/fakes/fake_nvml.c, and batches that add
the energy the H200 figures of docs/hardware.md give); its numbers say that the
pipeline works, nothing about a GPU.  The harness (model, request stream,
services) is benchmarks/gpu_harness.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gpu_harness as h  # beside this file: python puts the script's folder on sys.path

from nrgloops import MeterUnavailable, PowerCap, _checks, open_meter
from nrgloops.meters import Meter

HERE = Path(__file__).resolve().parent
_now = time.monotonic

COLUMNS = [
    "mode",
    "cap_w",
    "avg_power_w",
    "run_avg_power_w",
    "over_100ms",
    "over_100ms_instant",
    "on_time",
    "full_quality",
    "energy_per_request_j",
    "dropped",
    "queued",
    "late",
    "p99_latency_ms",
    "seconds",
]


def _row(res: h.StreamResult, cap: float | None) -> dict[str, Any]:
    req = res.batch
    return {
        "mode": res.mode,
        "cap_w": cap,
        "avg_power_w": res.steady.get("avg_power_w", res.avg_power_w),
        "run_avg_power_w": res.avg_power_w,
        "over_100ms": res.over_cap_share if cap else math.nan,
        "over_100ms_instant": res.over_cap_share_instant if cap else math.nan,
        "on_time": res.on_time_share,
        "full_quality": res.full_share,
        "energy_per_request_j": res.energy_per_request_j,
        "dropped": res.dropped * req,
        "queued": res.backlog * req,
        "late": res.late * req,
        "p99_latency_ms": res.p99_latency_ms,
        "seconds": res.duration_s,
    }


def _caps(cal: dict[str, float], given: str | None) -> list[float]:
    if given:
        return _checks.numbers(
            "--caps", _watts(given), "watts", lo=0.0, lo_open=True, distinct=True
        )
    lo, hi = cal["cheap"], cal["full"]
    if not hi > lo * 1.1:
        raise SystemExit(
            f"the variants' power levels are too close to hold a cap between them "
            f"(full {hi:.1f} W, early exit {lo:.1f} W); try a higher --rate"
        )
    return [round(lo + f * (hi - lo)) for f in (0.3, 0.5, 0.7)]


def checks(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """What must hold on the device, per cap: (name, passed, figures)."""
    out = []
    for r in rows:
        if r["mode"] != "nrg-loop":
            continue
        cap = r["cap_w"]
        err = (r["avg_power_w"] - cap) / cap
        out.append(
            (
                f"cap {cap:g} W: nrg-loop average power within 5% of the cap",
                abs(err) <= 0.05,
                f"{r['avg_power_w']:.1f} W ({100 * err:+.1f}%)",
            )
        )
        out.append(
            (
                f"cap {cap:g} W: nrg-loop over the cap by >5% (100 ms windows) under 10% of time",
                r["over_100ms"] < 0.10,
                f"{100 * r['over_100ms']:.1f}%",
            )
        )
        out.append(
            (
                f"cap {cap:g} W: nrg-loop serves every request on time",
                r["on_time"] >= 1.0,
                f"{100 * r['on_time']:.2f}% on time, {r['dropped']} dropped, "
                f"{r['queued']} queued, {r['late']} late",
            )
        )
        duty = next((d for d in rows if d["mode"] == "duty-cycle" and d["cap_w"] == cap), None)
        if duty is not None:
            out.append(
                (
                    f"cap {cap:g} W: the duty-cycled full model falls behind",
                    duty["on_time"] < 1.0,
                    f"{100 * duty['on_time']:.2f}% on time, {duty['dropped']} dropped, "
                    f"{duty['queued']} queued, {duty['late']} late",
                )
            )
    return out


def table(rows: list[dict[str, Any]], label: str) -> str:
    head = (
        f"{'mode':<11} {'cap W':>6} {'avg W':>7} {'>cap 100ms':>10} {'on time':>8} "
        f"{'full q.':>8} {'mJ/req':>8} {'dropped':>9} {'queued':>9}"
    )
    lines = [f"(power and energy {label}; avg W after the settle time; mJ per request)", head]
    for r in rows:
        cap = "-" if r["cap_w"] is None else f"{r['cap_w']:.0f}"
        over = "-" if r["cap_w"] is None else f"{100 * r['over_100ms']:.1f}%"
        lines.append(
            f"{r['mode']:<11} {cap:>6} {r['avg_power_w']:>7.1f} {over:>10} "
            f"{100 * r['on_time']:>7.2f}% {100 * r['full_quality']:>7.1f}% "
            f"{1e3 * r['energy_per_request_j']:>8.4f} {r['dropped']:>9d} {r['queued']:>9d}"
        )
    return "\n".join(lines)


def plot(
    path: Path,
    results: list[h.StreamResult],
    rows: list[dict[str, Any]],
    caps: list[float],
    title: str,
    label: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 3)
    mid = caps[len(caps) // 2]
    ax = fig.add_subplot(grid[0, :])
    colors = {
        "uncapped": "tab:gray",
        "nrg-loop": "tab:blue",
        "duty-cycle": "tab:orange",
        "bare-switch": "tab:red",
    }
    for res in results:
        if res.mode == "uncapped" or res.cap_w == mid:
            t = [p[0] for p in res.timeline]
            w = [p[1] for p in res.timeline]
            ax.plot(t, w, lw=1.0, color=colors.get(res.mode), label=res.mode)
    ax.axhline(mid, color="k", ls="--", lw=1, label=f"cap {mid:g} W")
    ax.axhline(mid * 1.05, color="k", ls=":", lw=0.8, label="cap + 5%")
    ax.set_xlabel("time in the run (s)")
    ax.set_ylabel(f"GPU power, 100 ms windows (W, {label})")
    ax.set_title(f"power at the middle cap ({mid:g} W)")
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)

    modes = ["nrg-loop", "duty-cycle"]
    width = 0.38
    xs = range(len(caps))
    for i, (key, name, scale) in enumerate(
        [
            ("on_time", "requests on time (%)", 100.0),
            ("energy_per_request_j", f"energy per request (mJ, {label})", 1e3),
            ("avg_power_w", f"average power (W, {label})", 1.0),
        ]
    ):
        a = fig.add_subplot(grid[1, i])
        for j, mode in enumerate(modes):
            vals = [
                next(
                    (scale * r[key] for r in rows if r["mode"] == mode and r["cap_w"] == c),
                    math.nan,
                )
                for c in caps
            ]
            a.bar([x + (j - 0.5) * width for x in xs], vals, width, label=mode, color=colors[mode])
        unc = next((r for r in rows if r["mode"] == "uncapped"), None)
        if unc is not None:
            a.axhline(scale * unc[key], color=colors["uncapped"], ls="--", lw=1, label="uncapped")
        if key == "avg_power_w":
            for x, c in zip(xs, caps, strict=True):
                a.plot([x - 0.45, x + 0.45], [c, c], color="k", lw=1)
        a.set_xticks(list(xs), [f"{c:g} W" for c in caps])
        a.set_xlabel("cap")
        a.set_title(name, fontsize=10)
        a.grid(axis="y", alpha=0.3)
        if i == 0:
            a.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU power cap benchmark (see the module doc)")
    p.add_argument("--rate", type=float, default=1.2e6, help="requests/s (default 1.2e6)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument(
        "--caps",
        default=None,
        help="comma-separated caps, W (default: 3 between the variants' measured levels)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="nrg-loop run length, s")
    p.add_argument(
        "--baseline-seconds", type=float, default=8.0, help="uncapped and duty-cycle run length, s"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds left out of the steady figures at a run's start",
    )
    p.add_argument("--calibrate-seconds", type=float, default=2.0)
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--duty-period", type=float, default=0.05, help="duty-cycle period, s")
    p.add_argument("--window", type=float, default=0.3, help="the cap's window, s")
    p.add_argument("--nvml-mode", default="auto", choices=["auto", "energy", "power"])
    p.add_argument("--gpu-index", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument(
        "--out", default=None, help="output folder (default $OUT, else benchmarks/results)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: a SIMULATED GPU on a fake NVML (checks the pipeline only)",
    )
    p.add_argument(
        "--slow",
        type=float,
        default=4.0,
        help="--dry-run: host batch interval = real interval x this",
    )
    args = p.parse_args(argv)
    positive = {"rate": args.rate, "seconds": args.seconds, "window": args.window}
    positive |= {"baseline_seconds": args.baseline_seconds, "settle": args.settle}
    positive |= {"calibrate_seconds": args.calibrate_seconds, "deadline_ms": args.deadline_ms}
    positive |= {"duty_period": args.duty_period, "slow": args.slow}
    try:
        for name, value in positive.items():
            _checks.number(f"--{name.replace('_', '-')}", value, lo=0.0, lo_open=True)
        _checks.count("--batch", args.batch, lo=1)
        if args.caps is not None:
            _caps({}, args.caps)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _watts(text: str) -> list[float]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(float(part.removesuffix("W")))
        except ValueError:
            raise ValueError(f"--caps: {part!r} is not a number of watts") from None
    return out


@dataclass
class Setup:
    """The device, its meters and the load, as the runs see them."""

    engine: Any  # h.Engine or h.SimEngine
    meter: Meter
    extra_meter: Meter | None
    rate: float  # requests/s on the host (the dry run's is --slow times lower)
    device: str
    label: str


def open_device(args: argparse.Namespace, tmp: Path) -> Setup:
    """The real GPU through NVML, or (``--dry-run``) the simulated one.

    SystemExit with the reason when there is no GPU to measure."""
    if args.dry_run:
        fake, so = h.fake_nvml(tmp)
        return Setup(
            engine=h.SimEngine(fake, args.batch, args.slow),
            meter=open_meter("nvml", library=so, mode="energy"),
            extra_meter=open_meter("nvml", library=so, mode="power"),
            rate=args.rate / args.slow,
            device="SIMULATED GPU (dry run)",
            label="SIMULATED",
        )
    if h.torch is None or not h.torch.cuda.is_available():
        raise SystemExit(
            "no CUDA GPU here (or no PyTorch): this benchmark needs one (or --dry-run to "
            "check the pipeline on a simulated GPU)"
        )
    engine = h.Engine("cuda", 4096, 8, 2, args.batch, h.torch.bfloat16, graphs=not args.no_graphs)
    try:
        meter = open_meter("nvml", index=args.gpu_index, mode=args.nvml_mode)
    except MeterUnavailable as exc:
        raise SystemExit(f"cannot read the GPU's power: {exc}") from None
    extra: Meter | None = None
    try:  # the instant power field, independent of the energy counter
        extra = open_meter("nvml", index=args.gpu_index, mode="power")
    except MeterUnavailable as exc:
        print(f"[bench] no cross-check meter ({exc})")
    return Setup(engine, meter, extra, args.rate, h.torch.cuda.get_device_name(0), meter.label)


def calibrate(setup: Setup, args: argparse.Namespace) -> dict[str, float]:
    """Each variant alone at the rate, idle, and the full model back to back."""
    cal = h.calibrate(setup.engine, setup.meter, setup.rate, seconds=args.calibrate_seconds)
    busy = h.run_stream(
        setup.engine,
        h.only(setup.engine, "full"),
        mode="busy",
        rate=setup.rate * 100,
        seconds=args.calibrate_seconds,
        deadline_s=1e9,
        meter=setup.meter,
    )
    cal["busy"] = busy.stepped_avg_w if math.isfinite(busy.stepped_avg_w) else busy.avg_power_w
    cal["busy_batch_s"] = busy.duration_s / max(busy.served, 1)  # device time per batch
    cal["busy_rate"] = busy.served * args.batch / busy.duration_s  # requests/s, real scale
    if args.dry_run:
        cal["busy_rate"] *= args.slow
    print(
        f"calibration ({setup.label}): idle {cal['idle']:.1f} W, full {cal['full']:.1f} W, "
        f"early exit {cal['cheap']:.1f} W at the rate; full back to back {cal['busy']:.1f} W "
        f"at {cal['busy_rate']:.4g} requests/s"
    )
    return cal


@dataclass
class Runs:
    """The runs so far; a run that raises is reported and the others go on
    (a device run is one shot: the other runs' numbers are still worth having)."""

    t_begin: float
    results: list[h.StreamResult] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(
        self, what: str, cap: float | None, run: Callable[[], h.StreamResult]
    ) -> h.StreamResult | None:
        try:
            res = run()
        except Exception as exc:  # reported, and the benchmark goes on
            traceback.print_exc()
            self.errors.append(f"{what} at cap {cap}: {type(exc).__name__}: {exc}")
            print(f"  ERROR {what} cap {cap}: {exc}")
            return None
        self.results.append(res)
        self.rows.append(_row(res, cap))
        r = self.rows[-1]
        print(
            f"  {res.mode:<10} cap {cap or 0:>5.0f} W: {r['avg_power_w']:.1f} W, "
            f"{100 * r['on_time']:.2f}% on time, {100 * r['full_quality']:.1f}% full, "
            f"{1e3 * r['energy_per_request_j']:.4f} mJ/request  ({_now() - self.t_begin:.0f} s)"
        )
        return res


def run_all(
    setup: Setup, args: argparse.Namespace, cal: dict[str, float], caps: list[float]
) -> Runs:
    """Uncapped; per cap the nrg-loop and the duty-cycled full model; the bare
    switch at the middle cap."""
    runs = Runs(_now())
    engine, meter, extra, rate = setup.engine, setup.meter, setup.extra_meter, setup.rate
    deadline = args.deadline_ms / 1e3
    short_settle = min(args.settle, args.baseline_seconds / 2)
    window = max(args.window, 3 * meter.resolution_s)

    def full_alone(
        mode: str, cap_w: float | None = None, duty: tuple[float, float, float] | None = None
    ) -> h.StreamResult:
        """The full model alone for the baseline time (uncapped, or duty-cycled
        to a cap: ``duty`` as h.run_stream takes it)."""
        return h.run_stream(
            engine,
            h.only(engine, "full"),
            mode=mode,
            rate=rate,
            seconds=args.baseline_seconds,
            deadline_s=deadline,
            meter=meter,
            extra_meter=extra,
            cap_w=cap_w,
            settle_s=short_settle,
            duty=duty,
        )

    def nrg_loop(cap: PowerCap) -> h.StreamResult:
        return h.serve_under_cap(
            engine,
            cap,
            rate=rate,
            seconds=args.seconds,
            deadline_s=deadline,
            extra_meter=extra,
            settle_s=args.settle,
        )

    runs.record("uncapped", None, lambda: full_alone("uncapped"))
    span = cal["busy"] - cal["idle"]
    for cap_w in caps:
        cap = PowerCap(cap_w, window=window, meter=meter)
        runs.record("nrg-loop", cap_w, partial(nrg_loop, cap))
        on = min(1.0, max(0.02, (cap_w - cal["idle"]) / span)) if span > 0 else 1.0
        duty = (on, args.duty_period, cal["busy_batch_s"])
        res = runs.record("duty-cycle", cap_w, partial(full_alone, "duty-cycle", cap_w, duty))
        if res is not None:
            res.steady["duty_on_fraction"] = on
    # the paper's bare switch (full while under the cap, else the early exit),
    # at the middle cap only: why the service mixes instead
    mid = PowerCap(caps[len(caps) // 2], window=window, meter=meter)
    runs.record(
        "bare-switch",
        mid.watts,
        lambda: h.serve_bare(
            engine,
            mid,
            rate=rate,
            seconds=args.baseline_seconds,
            deadline_s=deadline,
            extra_meter=extra,
            settle_s=short_settle,
        ),
    )
    return runs


def write_files(
    out: Path, stem: str, meta: dict[str, Any], runs: Runs, caps: list[float], title: str
) -> list[tuple[str, bool, str]]:
    """``stem``.csv, .json and .png in ``out``; returns the checks."""
    csv_path, json_path, png_path = (out / f"{stem}.{ext}" for ext in ("csv", "json", "png"))
    with open(csv_path, "w") as f:
        f.write("# " + json.dumps({k: meta[k] for k in ("device", "dry_run", "measured")}) + "\n")
        f.write(",".join(COLUMNS) + "\n")
        for r in runs.rows:
            f.write(",".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + "\n")
    found = checks(runs.rows)
    doc = {
        "meta": meta,
        "rows": runs.rows,
        "checks": [{"check": n, "pass": ok, "figures": fig} for n, ok, fig in found],
        "runs": [r.to_dict() for r in runs.results],
    }
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    try:
        plot(png_path, runs.results, runs.rows, caps, title, meta["label"])
    except Exception as exc:  # the numbers are written already
        traceback.print_exc()
        runs.errors.append(f"plot: {type(exc).__name__}: {exc}")
    print(f"\nwrote {csv_path}, {json_path}, {png_path}")
    return found


def _meta(
    setup: Setup,
    args: argparse.Namespace,
    cal: dict[str, float],
    caps: list[float],
    runs: Runs,
    t_begin: float,
) -> dict[str, Any]:
    return {
        "device": setup.device,
        "dry_run": args.dry_run,
        "label": setup.label,
        "meter": setup.meter.description,
        "extra_meter": (setup.extra_meter or setup.meter).description,
        "measured": setup.meter.measured,
        "model": setup.engine.describe(),
        "rate_requests_per_s": args.rate,
        "batch": args.batch,
        "deadline_ms": args.deadline_ms,
        "settle_s": args.settle,
        "calibration": cal,
        "caps_w": caps,
        "host": platform.node(),
        "python": platform.python_version(),
        "elapsed_s": _now() - t_begin,
        "errors": runs.errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    t_begin = _now()
    out = Path(args.out or os.environ.get("OUT") or HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    try:
        setup = open_device(args, Path(tempfile.mkdtemp(prefix="nrg-gpu-")))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"device: {setup.device}")
    print(f"model:  {setup.engine.describe()}")
    print(f"meter:  {setup.meter.description}")
    if setup.extra_meter is not None:
        print(f"also:   {setup.extra_meter.description} (its windows: over_100ms_instant)")
    slow = f" (host runs {args.slow:g}x slower)" if args.dry_run else ""
    print(
        f"load:   {args.rate:.4g} requests/s in batches of {args.batch}, "
        f"deadline {args.deadline_ms:g} ms{slow}"
    )
    cal = calibrate(setup, args)
    caps = _caps(cal, args.caps)
    print(f"caps:   {', '.join(f'{c:g} W' for c in caps)}")
    runs = run_all(setup, args, cal, caps)
    title = (
        f"NRG-loop holding a GPU power cap at {args.rate / 1e6:.2g} M requests/s - "
        f"{setup.device}, NVML ({setup.label})"
    )
    stem = "gpu_cap_dryrun" if args.dry_run else "gpu_cap"
    found = write_files(out, stem, _meta(setup, args, cal, caps, runs, t_begin), runs, caps, title)
    print(f"benchmark time: {_now() - t_begin:.0f} s\n")
    for name, ok, figures in found:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figures}")
    for e in runs.errors:
        print(f"ERROR {e}")
    if args.dry_run:
        print("(dry run: SIMULATED GPU; these checks test the pipeline, not a GPU)")
    print()
    print(table(runs.rows, setup.label))
    # a FAIL fails the run: the device run's exit code says whether the cap held
    return 1 if runs.errors or not all(ok for _, ok, _ in found) else 0


if __name__ == "__main__":
    sys.exit(main())
