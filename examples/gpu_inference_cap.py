"""A GPU inference service that holds a soft power cap from inside its own loop.

Requests arrive at a steady rate, in batches (1024 requests a batch by
default).  Each batch is served by the full model (8 bf16 Linear+GELU layers
of 4096x4096) or by an early-exit variant (its first 2 layers).  Under a fixed
load, the variant is a real power knob on a GPU (docs/hardware.md: at 1.2 M
requests/s on an H200, 8 layers draw 459 W, 2 layers 209 W), so a cap between
the two is held by mixing them, batch by batch:

    share = nrgloops.Knob(0.0, 1.0, 0.01, policy="pi", dwell=0.1)  # of full batches
    cap = nrgloops.PowerCap(args.cap, window=0.3, meter=open_meter("nvml"))
    net = nrgloops.PowerCap(1.1 * args.cap, window=0.3, meter=cap.meter)

    @nrgloops.nrg_adapt(cap, knob=share)
    def mixed(batch, shed=False):  # the full model for `share` of the batches
        return full(batch) if not shed and mix.take() else cheap(batch)

    @nrgloops.nrg_adapt(net)
    def serve(batch):              # one call per batch
        return mixed(batch)

    @nrgloops.nrg_alternate(serve)
    def shed(batch):               # over the cap by 10%: the early exit alone
        return mixed(batch, shed=True)

Why a share and not only "full while under the cap, early exit while over":
NVML's readings move every 100 ms, so that bare switch runs whole 100 ms
stretches of one variant and the power swings between the two variants'
levels around any cap in between.  On the simulated GPU of the benchmark's
--dry-run, at caps of 300 and 350 W, the bare switch had 62% and 48% of its
100 ms windows over the cap by more than 5% and averaged 7% and 3% over it;
the share had none and stayed within 2% (the benchmark measures both on the
GPU too).  The knob (a PI controller on the measured power) sets the share
of full batches, spread evenly (error diffusion, ``EvenMix``), so every
100 ms holds the mix.  ``nrg_alternate`` is the safety net for a sudden rise
(the start, a change of load): the early exit alone while the power is 10%
over the cap.  Every batch still passes through ``mixed``, so the knob sees
the power whichever variant runs.

Nothing here changes the GPU's settings: the power is read through NVML, and
the power is held by the service's own choice of work.

Runs without a GPU too: then it runs on the CPU with tiny sizes and the model
meter, whose power is ESTIMATED from CPU time, and it says so.  That is only a
smoke test of the code path, not a measurement of anything.

    python examples/gpu_inference_cap.py --cap 300 --rate 1.2e6 --seconds 20
    python examples/gpu_inference_cap.py            # cap: midway between the variants
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nrgloops import Knob, PowerCap, Report, Sampler, nrg_adapt, nrg_alternate, open_meter
from nrgloops.meters import Meter

torch: Any
try:  # typed Any whether or not torch is installed where mypy runs
    torch = importlib.import_module("torch")
except ImportError:  # pragma: no cover - said clearly in main()
    torch = None

__all__ = [
    "Engine",
    "EvenMix",
    "StreamResult",
    "Window100",
    "calibrate",
    "only",
    "stepped_average",
    "serve_bare",
    "serve_under_cap",
    "make_engine",
    "run_stream",
]

_now = time.monotonic


# -- the model and how it runs ------------------------------------------------------


class Engine:
    """The model on its device: ``full()`` and ``cheap()`` serve one batch.

    On CUDA each variant is captured once as a CUDA graph on a static input
    (random, resident on the GPU: request payloads are not copied in, so the
    measurement is the model's), and completion times come from CUDA events.
    On the CPU each call is synchronous.
    """

    def __init__(
        self,
        device: str,
        width: int,
        layers: int,
        cheap_layers: int,
        batch: int,
        dtype: Any,
        graphs: bool = True,
        seed: int = 0,
    ) -> None:
        assert torch is not None
        if not 1 <= cheap_layers < layers:
            raise ValueError(f"cheap_layers must be in [1, layers), got {cheap_layers} of {layers}")
        self.device = device
        self.cuda = device.startswith("cuda")
        self.width, self.layers, self.cheap_layers, self.batch = width, layers, cheap_layers, batch
        g = torch.Generator(device="cpu").manual_seed(seed)
        stack = []
        for _ in range(layers):
            lin = torch.nn.Linear(width, width, bias=True)
            with torch.no_grad():  # unit-variance activations through the stack
                lin.weight.copy_(torch.randn(width, width, generator=g) / math.sqrt(width))
                lin.bias.zero_()
            stack.append(lin)
        self.stack = torch.nn.ModuleList(stack).to(device=device, dtype=dtype).eval()
        self.x = torch.randn(batch, width, generator=g).to(device=device, dtype=dtype)
        self._graphs: dict[int, Any] = {}
        self._ref_event: Any = None
        self._ref_host = 0.0
        with torch.inference_mode():
            # warm up (kernels, cuBLAS handles), on a side stream before a capture
            side = torch.cuda.Stream() if self.cuda else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._warm_up()
                torch.cuda.current_stream().wait_stream(side)
            else:
                self._warm_up()
            if self.cuda and graphs:
                try:
                    for depth in (layers, cheap_layers):
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            self._forward(depth)
                        self._graphs[depth] = graph
                except Exception as exc:  # eager launches work as well
                    print(f"[engine] CUDA graphs unavailable ({exc}); launching eagerly")
                    self._graphs.clear()
        self.sync()

    def _warm_up(self) -> None:
        for depth in (self.layers, self.cheap_layers):
            for _ in range(3):
                self._forward(depth)

    def _forward(self, depth: int) -> Any:
        h = self.x
        for lin in self.stack[:depth]:
            h = torch.nn.functional.gelu(lin(h))
        self.out = h
        return h

    def _run(self, depth: int) -> None:
        graph = self._graphs.get(depth)
        if graph is not None:
            graph.replay()
        else:
            with torch.inference_mode():
                self._forward(depth)

    def full(self) -> None:
        self._run(self.layers)

    def cheap(self) -> None:
        self._run(self.cheap_layers)

    # -- time --------------------------------------------------------------
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def start_clock(self) -> None:
        """Tie device time to host time: a reference event right after a sync."""
        if self.cuda:
            self.sync()
            self._ref_event = torch.cuda.Event(enable_timing=True)
            self._ref_host = _now()
            self._ref_event.record()

    def mark(self) -> Any:
        """A token for 'the work launched so far'; its completion time comes later."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return _now()  # CPU: the work is done when the call returns

    def wait(self, token: Any) -> None:
        if self.cuda:
            token.synchronize()

    def done_times(self, tokens: list[Any]) -> list[float]:
        """Host monotonic time at which each token's work completed."""
        if not self.cuda:
            return [float(t) for t in tokens]
        self.sync()
        ref, t0 = self._ref_event, self._ref_host
        return [t0 + ref.elapsed_time(ev) / 1e3 for ev in tokens]

    def describe(self) -> str:
        where = torch.cuda.get_device_name(0) if self.cuda else "CPU"
        dt = str(self.x.dtype).replace("torch.", "")
        how = ", CUDA graphs" if self._graphs else ""
        return (
            f"{self.layers} x Linear({self.width}, {self.width})+GELU in {dt} on {where}{how}; "
            f"early exit after {self.cheap_layers} layers; batches of {self.batch}"
        )


def make_engine(args: argparse.Namespace) -> Engine:
    """The engine the arguments ask for (tiny float32 sizes on the CPU)."""
    assert torch is not None
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        return Engine(
            "cuda",
            args.width,
            args.layers,
            args.cheap_layers,
            args.batch,
            torch.bfloat16,
            graphs=not args.no_graphs,
        )
    torch.set_num_threads(1)  # one core: the model meter's estimate stays readable
    return Engine(
        "cpu", args.cpu_width, args.layers, args.cheap_layers, args.cpu_batch, torch.float32
    )


# -- the mix --------------------------------------------------------------------------


class EvenMix:
    """Error diffusion: True for a share ``knob.value`` of the calls, evenly spread
    (share 0.25: every 4th call), so every short stretch holds the mix."""

    def __init__(self, knob: Knob) -> None:
        self.knob = knob
        self.acc = 0.0

    def take(self) -> bool:
        self.acc += float(self.knob.value)
        if self.acc >= 1.0:
            self.acc -= 1.0
            return True
        return False


# -- the request stream -------------------------------------------------------------------


class Window100:
    """Collects non-overlapping 100 ms windowed powers from a sampler (pulled
    every second, so the ring's 10 s never overflows)."""

    def __init__(self, sampler: Sampler, width: float = 0.1) -> None:
        self.sampler = sampler
        self.width = width
        self.after = _now()
        self.t: list[float] = []
        self.w: list[float] = []
        self.pulled = self.after

    def pull(self) -> None:
        now = _now()
        self.pulled = now
        ts, ws = self.sampler.series(self.after, self.width)
        for t, w in zip(ts, ws, strict=True):
            # keep one trailing window per `width`: they then do not overlap
            if not self.t or t - self.t[-1] >= self.width * 0.999:
                self.t.append(t)
                self.w.append(w)
        if ts:
            self.after = ts[-1]

    def between(self, t0: float, t1: float) -> list[float]:
        return [w for t, w in zip(self.t, self.w, strict=True) if t0 + self.width <= t <= t1]


@dataclass
class StreamResult:
    """What one run of the service did (times are host monotonic seconds)."""

    mode: str
    cap_w: float | None
    seconds: float
    rate: float  # requests/s
    batch: int
    deadline_s: float
    arrived: int = 0  # batches arrived during the run
    served: int = 0
    on_time: int = 0
    late: int = 0
    dropped: int = 0
    backlog: int = 0  # arrived, neither served nor dropped at the end
    full: int = 0  # batches served by the full model
    energy_j: float = 0.0
    duration_s: float = 0.0
    p99_latency_ms: float = math.nan
    stepped_avg_w: float = math.nan  # over whole counter updates (runs under ~9 s)
    steady: dict[str, float] = field(default_factory=dict)
    windows_w: list[float] = field(default_factory=list)  # 100 ms windows, W
    windows_extra: list[float] = field(default_factory=list)  # the extra meter's
    steady_windows: list[float] = field(default_factory=list)  # those after settle_s
    timeline: list[tuple[float, float]] = field(default_factory=list)
    report: dict[str, Any] | None = None

    @property
    def avg_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def on_time_share(self) -> float:
        return self.on_time / self.arrived if self.arrived else math.nan

    @property
    def full_share(self) -> float:
        return self.full / self.served if self.served else math.nan

    @property
    def energy_per_request_j(self) -> float:
        n = self.served * self.batch
        return self.energy_j / n if n else math.nan

    def over_share(self, cap: float, margin: float = 0.05, steady: bool = True) -> float:
        """Share of the 100 ms windows over ``cap * (1 + margin)``."""
        ws = self.steady_windows if steady else self.windows_w
        if not ws:
            return math.nan
        return sum(w > cap * (1 + margin) for w in ws) / len(ws)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            avg_power_w=self.avg_power_w,
            on_time_share=self.on_time_share,
            full_share=self.full_share,
            energy_per_request_j=self.energy_per_request_j,
        )
        return d


def stepped_average(s: Sampler, t0: float, t1: float) -> float:
    """Average power between t0 and t1 over the meter's own readings, W.

    An energy counter that moves every 100 ms gives the energy between two
    of its updates exactly, and the NVML meter stamps each update with its
    time, so the average over whole updates has no quantisation error (an
    energy difference over host times is off by up to one update).  NaN when
    the span is too short or longer than the sampler's history.
    """
    span = t1 - t0 - 0.15  # the update in flight at t1 is not in yet
    if not 0.1 < span < 0.9 * s.history:
        return math.nan
    _, ws = s.series(t1 - 0.5, span)
    return ws[-1] if ws else math.nan


def run_stream(
    engine: Engine,
    serve: Callable[[int], bool],
    *,
    mode: str,
    rate: float,
    seconds: float,
    deadline_s: float,
    meter: Meter,
    extra_meter: Meter | None = None,
    cap_w: float | None = None,
    settle_s: float = 0.0,
    duty: tuple[float, float, float] | None = None,
    max_inflight: int = 4,
) -> StreamResult:
    """Serve a steady stream of batches for ``seconds``.

    Batch k arrives at ``t0 + k * batch / rate``.  ``serve(k)`` launches its
    work and returns True if the full model served it.  A batch still waiting
    ``deadline_s`` after its arrival is dropped (it could not be on time); a
    served batch is on time if its work completed within ``deadline_s`` of its
    arrival.  ``duty=(on_fraction, period_s, batch_s)``: serve only during
    the first ``on_fraction`` of each period, launching no batch that would
    run past it (``batch_s``: one batch's device time), and let the device
    idle in the rest (the duty-cycled baseline).  Energy and the 100 ms
    windows come from ``meter`` (an energy counter's own ~100 ms steps are
    exact averages); ``extra_meter``'s windows are kept too, for comparison
    (``windows_extra``).  ``settle_s`` leaves the first seconds out of the
    ``steady`` figures.
    """
    batch = engine.batch
    interval = batch / rate
    res = StreamResult(mode, cap_w, seconds, rate, batch, deadline_s)
    tokens: list[Any] = []
    arrivals: list[float] = []
    with Sampler(meter) as s, Sampler(extra_meter or meter) as sx:
        win = Window100(s)
        xwin = Window100(sx) if extra_meter is not None else None
        engine.start_clock()
        time.sleep(0.25)  # a few NVML updates before the first batch
        win.pull()
        if xwin is not None:
            xwin.pull()
        t0 = _now() + 0.005
        t_stop = t0 + seconds
        t_settle = t0 + settle_s
        e0 = s.energy()
        e_settle: float | None = None
        k = 0
        while True:
            now = _now()
            if now >= t_stop:
                break
            if e_settle is None and now >= t_settle:
                e_settle = s.energy()
                t_settle = now
            if now - win.pulled >= 1.0:
                win.pull()
                if xwin is not None:
                    xwin.pull()
            if duty is not None:
                on, period, batch_s = duty
                max_inflight = 2  # so that the device stops when the on-phase does
                phase = (now - t0) % period
                # off (or a batch launched now would still run when it ends):
                # let the device go idle until the next period
                if phase + 2 * max(batch_s, 0.0) > on * period:
                    engine.sync()
                    time.sleep(max(0.0, period - phase - (_now() - now)))
                    continue
            arrival = t0 + k * interval
            if arrival > now:
                time.sleep(arrival - now)
                continue
            if now - arrival > deadline_s:
                res.dropped += 1
                k += 1
                continue
            if len(tokens) >= max_inflight:  # do not let the host run ahead
                engine.wait(tokens[-max_inflight])
            res.full += bool(serve(k))
            tokens.append(engine.mark())
            arrivals.append(arrival)
            k += 1
        engine.sync()
        t_end = _now()
        # At t0 and at t_end alike the counter holds the energy up to its last
        # update, so the difference is unbiased (within one update each end).
        e1 = s.energy()
        res.stepped_avg_w = stepped_average(s, t0, t_end)
        time.sleep(0.15)  # the last update lands, for the windows
        win.pull()
        if xwin is not None:
            xwin.pull()
            res.windows_extra = xwin.between(t0, t_end)
    res.arrived = int(math.floor(seconds / interval)) + 1
    res.served = len(tokens)
    res.backlog = max(0, res.arrived - res.served - res.dropped)
    done = engine.done_times(tokens)
    lat = sorted(d - a for d, a in zip(done, arrivals, strict=True))
    res.on_time = sum(x <= deadline_s for x in lat)
    res.late = res.served - res.on_time
    if lat:
        res.p99_latency_ms = 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    res.energy_j = e1 - e0
    res.duration_s = t_end - t0
    res.windows_w = win.between(t0, t_end)
    if e_settle is not None and t_end > t_settle:
        res.steady_windows = win.between(t_settle, t_end)
        res.steady = {
            "from_s": t_settle - t0,
            "avg_power_w": (e1 - e_settle) / (t_end - t_settle),
        }
    else:
        res.steady_windows = res.windows_w
        res.steady = {"from_s": 0.0, "avg_power_w": res.avg_power_w}
    res.timeline = [
        (t - t0, w) for t, w in zip(win.t, win.w, strict=True) if t0 + win.width <= t <= t_end
    ]
    return res


def only(engine: Engine, variant: str) -> Callable[[int], bool]:
    """A serve function that always runs one variant ("full" or "cheap")."""
    run = engine.full if variant == "full" else engine.cheap
    is_full = variant == "full"

    def serve(k: int) -> bool:
        run()
        return is_full

    return serve


def calibrate(engine: Engine, meter: Meter, rate: float, seconds: float = 2.0) -> dict[str, float]:
    """The power of each variant alone at ``rate`` (and idle), W: ``idle``,
    ``full``, ``cheap``."""
    out: dict[str, float] = {}
    with Sampler(meter) as s:
        time.sleep(0.3)
        t0 = _now()
        time.sleep(min(seconds, 1.5))
        out["idle"] = stepped_average(s, t0, _now())
    for name in ("full", "cheap"):
        r = run_stream(
            engine,
            only(engine, name),
            mode=name,
            rate=rate,
            seconds=seconds,
            deadline_s=1.0,
            meter=meter,
        )
        out[name] = r.stepped_avg_w if math.isfinite(r.stepped_avg_w) else r.avg_power_w
        out[f"{name}_on_time"] = r.on_time_share
    return out


# -- the service under a cap ---------------------------------------------------------------


# The share knob's controller (see nrgloops.Knob).
KNOB: dict[str, Any] = {"policy": "pi", "band": 0.04, "dwell": 0.1, "kp": 0.3, "ki": 0.8}
SAFETY = 0.10  # the safety net's margin over the cap


def _loop_report(rep: Report, **extra: Any) -> dict[str, Any]:
    """The figures of a loop's report that StreamResult.report keeps (what
    print_result shows, and the text), plus ``extra``."""
    return {
        **extra,
        "iterations": rep.iterations,
        "avg_power_w": rep.avg_power_w,
        "peak_power_w": rep.peak_power_w,
        "over_cap_fraction": rep.over_cap_fraction,
        "window_s": rep.window_s,
        "measured": rep.measured,
        "text": str(rep),
    }


def serve_under_cap(
    engine: Engine,
    cap: PowerCap,
    *,
    rate: float,
    seconds: float,
    deadline_s: float,
    extra_meter: Meter | None = None,
    settle_s: float = 0.0,
    start_share: float = 1.0,
    knob: dict[str, Any] | None = None,
    safety: float | None = SAFETY,
) -> StreamResult:
    """The NRG-loop: the full model for a share of the batches (a PI knob on
    the measured power sets the share), the early exit for the rest, and the
    early exit alone while the power is over the cap by more than ``safety``
    (``None``: no such net)."""
    share = Knob(0.0, 1.0, 0.01, start=start_share, **{**KNOB, **(knob or {})})
    mix = EvenMix(share)

    @nrg_adapt(cap, knob=share)
    def mixed(k: int, shed: bool = False) -> bool:
        # the share of full batches, evenly spread; every batch passes here,
        # so that the knob sees the power whichever variant runs
        if not shed and mix.take():
            engine.full()
            return True
        engine.cheap()
        return False

    serve: Callable[[int], bool] = mixed
    net: Any = None
    if safety is not None:
        # nrg_alternate as a safety net: the early exit alone while the power
        # is over the cap by more than `safety` (the start, a sudden change).
        # Not at the cap itself: 100 ms stretches of one variant would swing
        # the power around the cap (see the module's doc).
        hard = PowerCap(cap.watts * (1.0 + safety), window=cap.window, meter=cap.meter)

        def through_the_mix(k: int) -> bool:
            return mixed(k)

        def shed(k: int) -> bool:
            return mixed(k, shed=True)

        net = nrg_adapt(hard)(through_the_mix)
        nrg_alternate(net)(shed)
        serve = net

    res = run_stream(
        engine,
        serve,
        mode="nrg-loop",
        rate=rate,
        seconds=seconds,
        deadline_s=deadline_s,
        meter=cap.meter,
        extra_meter=extra_meter,
        cap_w=cap.watts,
        settle_s=settle_s,
    )
    mixed.close()
    rep = mixed.report
    shed_its = None
    if net is not None:
        net.close()
        shed_its = net.report.iterations
    res.report = _loop_report(rep, safety_net=shed_its, knob=rep.knob)
    return res


def serve_bare(
    engine: Engine,
    cap: PowerCap,
    *,
    rate: float,
    seconds: float,
    deadline_s: float,
    extra_meter: Meter | None = None,
    settle_s: float = 0.0,
) -> StreamResult:
    """The paper's bare NRG_ADAPT / NRG_ALTERNATE, for comparison: the full
    model while the windowed power is <= the cap, else the early exit."""

    @nrg_adapt(cap)
    def full(k: int) -> bool:
        engine.full()
        return True

    @nrg_alternate(full)
    def cheap(k: int) -> bool:
        engine.cheap()
        return False

    res = run_stream(
        engine,
        full,
        mode="bare-switch",
        rate=rate,
        seconds=seconds,
        deadline_s=deadline_s,
        meter=cap.meter,
        extra_meter=extra_meter,
        cap_w=cap.watts,
        settle_s=settle_s,
    )
    full.close()
    res.report = _loop_report(full.report)
    return res


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cap",
        type=float,
        default=None,
        help="soft power cap, W (default: midway between the variants' power)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s (default 1.2e6 on a GPU, 12800 on the CPU)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="how long to serve, s (default 20 on a GPU, 3 on the CPU)",
    )
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=100.0,
        help="a batch is on time if served within this of its arrival",
    )
    p.add_argument(
        "--meter", default=None, help="meter kind (default nvml on a GPU, model on the CPU)"
    )
    p.add_argument("--nvml-mode", default="auto", choices=["auto", "energy", "power"])
    p.add_argument("--gpu-index", type=int, default=0, help="NVML index of the GPU")
    p.add_argument("--window", type=float, default=0.3, help="the cap's window, s")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--cheap-layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--cpu-width", type=int, default=256)
    p.add_argument("--cpu-batch", type=int, default=64)
    p.add_argument("--no-graphs", action="store_true", help="launch eagerly, no CUDA graphs")
    return p.parse_args(argv)


def open_service_meter(args: argparse.Namespace, cuda: bool) -> Meter:
    kind = args.meter or ("nvml" if cuda else "model")
    if kind == "nvml":
        return open_meter("nvml", index=args.gpu_index, mode=args.nvml_mode)
    if kind == "model":
        # this process's CPU time only: other programs on the machine stay out
        return open_meter("model", scope="process")
    return open_meter(kind)


def print_result(res: StreamResult, label: str) -> None:
    ms = 1e3 * res.energy_per_request_j
    print(
        f"  requests served on time:     {res.on_time * res.batch} of "
        f"{res.arrived * res.batch} ({100 * res.on_time_share:.1f}%); "
        f"dropped {res.dropped * res.batch}, queued {res.backlog * res.batch}"
    )
    print(f"  share served by the full model: {100 * res.full_share:.1f}% of the batches")
    print(f"  energy per request:          {res.energy_per_request_j:.3e} J ({ms:.4f} mJ, {label})")
    print(f"  average power:               {res.avg_power_w:.1f} W ({label})")
    if res.report:
        r = res.report
        print(
            f"  peak windowed power:         {r['peak_power_w']:.1f} W over "
            f"{r['window_s']:g} s windows ({label})"
        )
        print(
            f"  share of time over the cap:  {100 * (r['over_cap_fraction'] or 0):.1f}% "
            f"({r['window_s']:g} s windows, {label})"
        )
    if res.cap_w is not None and res.windows_w:
        print(
            f"  100 ms windows over the cap by >5%: "
            f"{100 * res.over_share(res.cap_w, steady=False):.1f}% ({label})"
        )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if torch is None:
        print("this example needs PyTorch: pip install torch", file=sys.stderr)
        return 2
    engine = make_engine(args)
    cuda = engine.cuda
    if not cuda:
        print(
            "NOTE: no CUDA GPU here: running on the CPU with tiny sizes and the model meter.\n"
            "      Every power figure below is ESTIMATED from CPU time; this is a smoke "
            "test of the code path, not a GPU measurement."
        )
    rate = args.rate or (1.2e6 if cuda else 12800.0)
    seconds = args.seconds or (20.0 if cuda else 3.0)
    meter = open_service_meter(args, cuda)
    label = meter.label
    print(f"model: {engine.describe()}")
    print(f"meter: {meter.kind} ({label}): {meter.description}")
    print(
        f"load:  {rate:.4g} requests/s = {rate / engine.batch:.1f} batches/s, "
        f"deadline {args.deadline_ms:g} ms"
    )
    cap_w = args.cap
    if cap_w is None:
        cal = calibrate(engine, meter, rate, seconds=1.0 if not cuda else 2.0)
        cap_w = 0.5 * (cal["full"] + cal["cheap"])
        print(
            f"calibration ({label}): idle {cal['idle']:.1f} W, full {cal['full']:.1f} W, "
            f"early exit {cal['cheap']:.1f} W -> cap {cap_w:.1f} W (midway)"
        )
    with_window = max(args.window, 3 * meter.resolution_s)
    cap = PowerCap(cap_w, window=with_window, meter=meter)
    print(f"cap:   {cap!r}")
    res = serve_under_cap(
        engine, cap, rate=rate, seconds=seconds, deadline_s=args.deadline_ms / 1e3
    )
    print(f"\nserved {seconds:g} s under a {cap_w:.1f} W cap ({label}):")
    print_result(res, label)
    assert res.report is not None
    print("\nthe loop's own report:\n" + res.report["text"])
    if not cuda:
        print("\n(CPU smoke run: power ESTIMATED by the model meter, not measured.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
