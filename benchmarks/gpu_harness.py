"""The GPU cap benchmark's harness: the model, a steady request stream, and the services.

``Engine`` runs the model on its device (8 bf16 Linear+GELU layers of
4096x4096 on a GPU, captured as CUDA graphs; tiny float32 sizes on the CPU)
with an early-exit variant (its first 2 layers); ``SimEngine`` stands in for
it on a SIMULATED GPU (``--dry-run``: a fake libnvidia-ml, and batches that
add the energy the H200 figures of docs/hardware.md give).  ``run_stream``
serves a steady stream of batches with either and measures the run through
``nrgloops.report.WindowStats`` (the project's one definition of average,
peak and share over the cap); ``serve_under_cap`` is the NRG-loop service
(examples/gpu_inference_cap.py writes the same to a user),
``serve_bare`` the paper's bare switch, and ``run_stream(duty=...)`` the
duty-cycled full model.

Nothing here changes a GPU's settings: NVML is only read.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nrgloops import Knob, PowerCap, Report, Sampler, _checks, nrg_adapt, nrg_alternate
from nrgloops.meters import Meter
from nrgloops.report import WindowStats

torch: Any
try:  # typed Any whether or not torch is installed where mypy runs
    torch = importlib.import_module("torch")
except ImportError:  # the dry run needs no torch
    torch = None

__all__ = [
    "OVER_MARGIN",
    "WINDOW_S",
    "Engine",
    "SimEngine",
    "StreamResult",
    "calibrate",
    "fake_nvml",
    "only",
    "run_stream",
    "serve_bare",
    "serve_under_cap",
    "stepped_average",
]

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 0.1  # the windows the checks look at: one NVML update each
OVER_MARGIN = 0.05  # a window counts as over the cap when over it by more than this
_now = time.monotonic


class Device(Protocol):
    """What ``run_stream`` needs of an engine (``Engine`` or ``SimEngine``)."""

    batch: int
    cuda: bool

    def full(self) -> None: ...
    def cheap(self) -> None: ...
    def sync(self) -> None: ...
    def start_clock(self) -> None: ...
    def mark(self) -> Any: ...
    def wait(self, token: Any) -> None: ...
    def done_times(self, tokens: list[Any]) -> list[float]: ...
    def describe(self) -> str: ...


# -- the model on a GPU (or the CPU) --------------------------------------------------


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
        _checks.count("layers", layers, lo=2)
        _checks.count("cheap_layers", cheap_layers, lo=1, hi=layers - 1)
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


class SimEngine:
    """Stands in for ``Engine`` on a machine without a GPU.

    Each batch adds the energy the H200 figures give (above idle) to a fake
    NVML's counter, and occupies a simulated device for its busy time; the
    numbers are scaled so that a slower host loop sees the same power levels.
    """

    # docs/hardware.md, H200, batches of 1024 at 1.2 M requests/s: 8 layers 459 W,
    # 2 layers 209 W, idle 118 W; back to back about 693 W.
    IDLE_W, FULL_W, CHEAP_W, BUSY_W, RATE = 118.0, 459.0, 209.0, 693.0, 1.2e6

    def __init__(self, fake: Any, batch: int, slow: float) -> None:
        self.fake = fake
        self.batch = batch
        self.cuda = False
        self.layers, self.cheap_layers = 8, 2
        interval = batch / self.RATE * slow  # the host's batch interval
        self.e_full = (self.FULL_W - self.IDLE_W) * interval
        self.e_cheap = (self.CHEAP_W - self.IDLE_W) * interval
        self.b_full = self.e_full / (self.BUSY_W - self.IDLE_W)
        self.b_cheap = self.e_cheap / (self.BUSY_W - self.IDLE_W)
        self.busy_until = 0.0
        fake.fake_nvml_simulate(self.IDLE_W, 0.1)

    def _run(self, joules: float, busy: float) -> None:
        now = _now()
        self.busy_until = max(now, self.busy_until) + busy
        self.fake.fake_nvml_add_energy(joules)

    def full(self) -> None:
        self._run(self.e_full, self.b_full)

    def cheap(self) -> None:
        self._run(self.e_cheap, self.b_cheap)

    def sync(self) -> None:
        self.wait(self.busy_until)

    def start_clock(self) -> None:
        pass

    def mark(self) -> float:
        return self.busy_until

    def wait(self, token: float) -> None:
        d = token - _now()
        if d > 0:
            time.sleep(d)

    def done_times(self, tokens: list[float]) -> list[float]:
        return list(tokens)

    def describe(self) -> str:
        return (
            "SIMULATED GPU (fake NVML; per-batch energy from the H200 figures: full 459 W, "
            "early exit 209 W, idle 118 W at 1.2 M requests/s)"
        )


def fake_nvml(tmp: Path) -> tuple[Any, str]:
    """Build the fake libnvidia-ml (tests/fakes/fake_nvml.c) into ``tmp`` and
    load it: (its ctypes handle, its path)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("--dry-run needs gcc to build the fake libnvidia-ml")
    so = tmp / "libfake-nvml.so"
    cmd = [gcc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-I", str(ROOT / "csrc")]
    cmd += ["-o", str(so), str(ROOT / "tests" / "fakes" / "fake_nvml.c"), "-lpthread"]
    subprocess.run(cmd, check=True)  # -I csrc: nvml_api.h, the meter's own NVML types
    lib = ctypes.CDLL(str(so), mode=ctypes.RTLD_GLOBAL)
    lib.fake_nvml_simulate.argtypes = [ctypes.c_double, ctypes.c_double]
    lib.fake_nvml_add_energy.argtypes = [ctypes.c_double]
    return lib, str(so)


# -- the request stream -------------------------------------------------------------------


@dataclass
class StreamResult:
    """What one run of the service did (times are host monotonic seconds).

    The over-cap shares are ``WindowStats.over_share`` of ``WINDOW_S``
    windows against the cap plus ``OVER_MARGIN``: ``over_cap_share`` after
    the settle time, by the loop's meter; ``over_cap_share_instant`` the same
    by the second meter (the instant power field), as a cross-check.
    """

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
    avg_power_w: float = math.nan  # the whole run's
    duration_s: float = 0.0
    p99_latency_ms: float = math.nan
    stepped_avg_w: float = math.nan  # over whole counter updates (runs under ~9 s)
    steady: dict[str, float] = field(default_factory=dict)
    over_cap_share: float = math.nan
    over_cap_share_instant: float = math.nan
    peak_w: float = math.nan  # the steady part's peak WINDOW_S power
    timeline: list[tuple[float, float]] = field(default_factory=list)
    report: dict[str, Any] | None = None

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
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


def _windows(s: Sampler, cap_w: float | None, t0: float, trace: bool = False) -> WindowStats:
    over = None if cap_w is None else cap_w * (1.0 + OVER_MARGIN)
    return WindowStats(s, WINDOW_S, cap_w=over, t0=t0, trace_every=WINDOW_S if trace else 0.0)


def run_stream(
    engine: Device,
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
    idle in the rest (the duty-cycled baseline).  Energy and the windows come
    from ``meter``; ``extra_meter``'s windows are a cross-check.
    ``settle_s`` leaves the first seconds out of the ``steady`` figures.
    """
    batch = engine.batch
    interval = batch / rate
    res = StreamResult(mode, cap_w, seconds, rate, batch, deadline_s)
    tokens: list[Any] = []
    arrivals: list[float] = []
    with Sampler(meter) as s, Sampler(extra_meter or meter) as sx:
        engine.start_clock()
        time.sleep(0.25)  # a few NVML updates before the first batch
        t0 = _now() + 0.005
        run = _windows(s, cap_w, t0, trace=True)
        run.begin()
        steady: list[WindowStats] = []  # the loop's meter's, the extra meter's
        t_stop, t_settle = t0 + seconds, t0 + settle_s
        k = 0
        while True:
            now = _now()
            if now >= t_stop:
                break
            if not steady and now >= t_settle:
                steady = [_windows(s, cap_w, now)]
                if extra_meter is not None:
                    steady.append(_windows(sx, cap_w, now))
                for w in steady:
                    w.begin()
            if now - run.pulled >= 1.0:
                for w in (run, *steady):
                    w.pull()
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
        ends = [w.sampler.latest() for w in (run, *steady)]
        res.stepped_avg_w = stepped_average(s, t0, t_end)
        time.sleep(0.15)  # the last update lands, for the windows
        for w, reading in zip((run, *steady), ends, strict=True):
            w.end(reading)
    res.arrived = int(math.floor(seconds / interval)) + 1
    res.served = len(tokens)
    res.backlog = max(0, res.arrived - res.served - res.dropped)
    done = engine.done_times(tokens)
    lat = sorted(d - a for d, a in zip(done, arrivals, strict=True))
    res.on_time = sum(x <= deadline_s for x in lat)
    res.late = res.served - res.on_time
    if lat:
        res.p99_latency_ms = 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    res.energy_j, res.avg_power_w = run.energy_j, run.average_w
    res.duration_s = t_end - t0
    main = steady[0] if steady else run
    res.steady = {"from_s": main.t0 - t0, "avg_power_w": main.average_w}
    res.over_cap_share = _share(main.over_share())
    res.peak_w = main.peak_w
    if len(steady) > 1:
        res.over_cap_share_instant = _share(steady[1].over_share())
    res.timeline = [(t - t0, w) for t, w in run.trace if t0 + WINDOW_S <= t <= t_end]
    return res


def _share(x: float | None) -> float:
    return math.nan if x is None else x


def only(engine: Device, variant: str) -> Callable[[int], bool]:
    """A serve function that always runs one variant ("full" or "cheap")."""
    run = engine.full if variant == "full" else engine.cheap
    is_full = variant == "full"

    def serve(k: int) -> bool:
        run()
        return is_full

    return serve


def calibrate(engine: Device, meter: Meter, rate: float, seconds: float = 2.0) -> dict[str, float]:
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


# -- the services under a cap ---------------------------------------------------------------


def _loop_report(rep: Report) -> dict[str, Any]:
    """The figures of a loop's report that StreamResult.report keeps."""
    return {
        "iterations": rep.iterations,
        "avg_power_w": rep.avg_power_w,
        "peak_power_w": rep.peak_power_w,
        "over_cap_fraction": rep.over_cap_fraction,
        "window_s": rep.window_s,
        "measured": rep.measured,
        "knob": rep.knob,
        "text": str(rep),
    }


def _serve(
    engine: Device, cap: PowerCap, knob: Knob[int] | None, mode: str, **stream: Any
) -> StreamResult:
    """The full model as an adapted function, the early exit as its alternate."""

    @nrg_adapt(cap, knob=knob)
    def full(k: int) -> bool:
        engine.full()
        return True

    @nrg_alternate(full)
    def cheap(k: int) -> bool:
        engine.cheap()
        return False

    res = run_stream(engine, full, mode=mode, meter=cap.meter, cap_w=cap.watts, **stream)
    full.close()
    res.report = _loop_report(full.report)
    return res


def serve_under_cap(engine: Device, cap: PowerCap, **stream: Any) -> StreamResult:
    """The NRG-loop, as the example writes it: ``nrg_adapt(cap)`` on the full
    model and ``nrg_alternate`` for the early exit; the library holds the cap
    by mixing the two, batch by batch (the share of full-model batches is a
    mixed level with a learned power model: ``nrgloops.control``, policy
    "mix").  ``stream``: ``run_stream``'s keywords."""
    return _serve(engine, cap, None, "nrg-loop", **stream)


def serve_bare(engine: Device, cap: PowerCap, **stream: Any) -> StreamResult:
    """The paper's bare switch, for comparison: the full model while the
    windowed power is <= the cap, else the early exit (a two-level knob moved
    at every tick, with no hysteresis and no dwell)."""
    switch = Knob(0, 1, 1, policy="step", band=0.0, dwell=0.0)
    return _serve(engine, cap, switch, "bare-switch", **stream)
