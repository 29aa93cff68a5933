"""A Prometheus exporter: the meter's energy and power, and each running loop's state.

    exporter = nrgloops.start_exporter(port=9108)   # in-process, a daemon thread
    ...
    exporter.stop()

or ``nrgloops serve --port 9108`` for a machine.  Needs ``pip install
"nrgloops[prometheus]"`` (prometheus-client).

Metrics follow Prometheus' naming (base units, ``_total`` for counters) and
carry ``meter`` and ``measured`` labels ("true" for a hardware counter,
"false" for the model's estimate):

    nrgloops_energy_joules_total{domain}        counter: energy since the exporter started
    nrgloops_power_watts{domain}                gauge: average power over the last window
    nrgloops_power_window_seconds               gauge: that window
    nrgloops_meter_info{description}            1, with where the numbers come from
    nrgloops_loop_cap_watts{loop,kind}          gauge: a running loop's power cap
    nrgloops_loop_budget_joules{loop,kind}      gauge: a running loop's energy budget
    nrgloops_loop_knob_level{loop,kind}         gauge: its knob's real level (knob.level)
    nrgloops_loop_power_watts{loop,kind}        gauge: the windowed power the loop reads
    nrgloops_loop_iterations_total{loop,kind,variant}  counter: adapt / alternate, ran / skipped
    nrgloops_loop_over_cap_seconds_total{loop,kind}    counter: time the power was over the cap
    nrgloops_loop_items_left{loop,kind}         gauge: items a truncated/perforated loop has left

Domains overlap (a package contains its cores and uncore): sum only the
``package-N`` ones for a machine's total.  A loop's labels are its name
(``#2``, ``#3``... when names repeat) and kind; its series go away when it ends.

Sampling stays on the C sampler thread: a scrape reads only what it
published (the ring's latest row and the published windowed powers, and the
counts a loop keeps), never the hardware.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from nrgloops import _checks, _forksafe
from nrgloops.constraints import (
    EnergyBudget,
    PowerCap,
    default_window,
    shared_meter,  # one meter per kind string
)
from nrgloops.meters import Meter
from nrgloops.sampler import Sampler

__all__ = ["DEFAULT_PORT", "Exporter", "start_exporter"]

DEFAULT_PORT = 9108


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            'the Prometheus exporter needs prometheus-client: pip install "nrgloops[prometheus]"'
        ) from None
    return prometheus_client


class _Collector:
    """What a scrape reads: published values only."""

    def __init__(self, sampler: Sampler, window: float, started: float) -> None:
        self.sampler = sampler
        self.meter = sampler.meter
        self.window = window
        self.started = started  # wall clock, for the counters' _created
        self.slots = {d: sampler.watch(window, d) for d in self.meter.domains}
        self.published = sampler.published
        self.base = [self.meter.kind, "true" if self.meter.measured else "false"]

    def describe(self) -> list[Any]:
        return []  # collected at each scrape only (the loops come and go)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        m, base = self.meter, self.base
        labels = ["domain", "meter", "measured"]
        energy = CounterMetricFamily(
            "nrgloops_energy_joules",
            "Energy used since the exporter started, per domain of the meter (domains overlap: "
            "a package contains its cores), J",
            labels=labels,
        )
        power = GaugeMetricFamily(
            "nrgloops_power_watts",
            f"Average power over the last {self.window:g} s, per domain of the meter, W",
            labels=labels,
        )
        for d in m.domains:
            energy.add_metric([d, *base], self.sampler.energy(d), created=self.started)
            power.add_metric([d, *base], float(self.published[self.slots[d]]))
        yield energy
        yield power
        yield GaugeMetricFamily(
            "nrgloops_power_window_seconds",
            "The averaging window of nrgloops_power_watts, s",
            value=self.window,
        )
        info = InfoMetricFamily("nrgloops_meter", "Where the energy and power come from")
        info.add_metric([], {"meter": m.kind, "measured": base[1], "description": m.description})
        yield info
        yield from _loop_metrics(self.started)


def _loop_metrics(started: float) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from nrgloops.loops import running_loops

    labels = ["loop", "kind", "meter", "measured"]
    cap = GaugeMetricFamily(
        "nrgloops_loop_cap_watts", "A running loop's power cap, W", labels=labels
    )
    budget = GaugeMetricFamily(
        "nrgloops_loop_budget_joules", "A running loop's energy budget, J", labels=labels
    )
    knob = GaugeMetricFamily(
        "nrgloops_loop_knob_level",
        "The real-valued level a running loop's knob averages to (its mix of grid levels)",
        labels=labels,
    )
    power = GaugeMetricFamily(
        "nrgloops_loop_power_watts",
        "The windowed power a running loop compares with its cap, W",
        labels=labels,
    )
    iterations = CounterMetricFamily(
        "nrgloops_loop_iterations",
        "Iterations of a running loop per variant (adapt / alternate, or adapt / "
        "over_cap_at_bottom with a knob and no alternate; ran / skipped)",
        labels=[*labels, "variant"],
    )
    over = CounterMetricFamily(
        "nrgloops_loop_over_cap_seconds",
        "Time a running loop's windowed power was over its cap, s (counted every ~2 s)",
        labels=labels,
    )
    left = GaugeMetricFamily(
        "nrgloops_loop_items_left",
        "Items a running truncated or perforated loop has not reached yet",
        labels=labels,
    )
    seen: dict[str, int] = {}
    for loop in running_loops():
        name = loop.name or loop.kind
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        meter = loop._meter
        values = [name, loop.kind, meter.kind, "true" if meter.measured else "false"]
        c = loop._constraint
        if isinstance(c, PowerCap):
            cap.add_metric(values, c.watts)
            rec = loop._rec
            if rec is not None:
                over.add_metric(values, rec.over_s, created=started)
        elif isinstance(c, EnergyBudget):
            budget.add_metric(values, c.joules)
        if loop.knob is not None:
            knob.add_metric(values, float(loop.knob.level))
        power.add_metric(values, loop.power)
        for variant, n in loop._iterations().items():
            if variant == "left":
                if n is not None:
                    left.add_metric(values, n)
            elif n is not None:
                iterations.add_metric([*values, variant], n, created=started)
    yield from (cap, budget, knob, power, iterations, over, left)


class Exporter:
    """A running exporter: an HTTP server thread answering ``/metrics``.

    Attributes:
        port: the port it listens on (the one the OS chose for ``port=0``).
        url: where to scrape it.
        sampler: the sampler its energy and power come from.
    """

    def __init__(self, port: int, addr: str, meter: Meter, window: float) -> None:
        pc = _prometheus()
        self.sampler = Sampler(meter).start()
        try:
            self.registry = pc.CollectorRegistry(auto_describe=False)
            self.registry.register(_Collector(self.sampler, window, time.time()))
            try:
                self._server, self._thread = pc.start_http_server(
                    port, addr=addr, registry=self.registry
                )
            except OSError as exc:
                raise OSError(
                    exc.errno, f"port={port} on {addr}: cannot listen there ({exc.strerror})"
                ) from None
        except BaseException:
            self.sampler.stop()
            raise
        self.addr = addr
        self.port: int = self._server.server_address[1]
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{self.port}/metrics"
        self._lock = _forksafe.lock()
        self._stopped = False

    def stop(self) -> None:
        """Stop serving and sampling (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.sampler.stop()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<Exporter {self.url} {self.sampler.meter.kind} {state}>"


def start_exporter(
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    meter: str | Meter = "auto",
    window: float | None = None,
) -> Exporter:
    """Serve Prometheus metrics of ``meter`` and of every running loop.

    Args:
        port: TCP port (0: any free one; see ``Exporter.port``).
        addr: address to listen on; "127.0.0.1" (default) for this machine
            only, "0.0.0.0" for every interface.  Fine-grained power is a
            side channel (PLATYPUS, 2020): expose it deliberately.
        meter: a kind ("auto", "msr", ...) or a Meter; a kind string gives
            the same meter, and so the same sampler thread, as a PowerCap
            made with it.
        window: the averaging window of ``nrgloops_power_watts``, s
            (default: the meter's, 0.1 s for RAPL, 1 s for NVML).

    Raises:
        ImportError: prometheus-client is not installed.
        OSError: the port cannot be listened on (in use, not allowed).
        TypeError / ValueError: a bad argument (named in the message).
    """
    port = _checks.count("port", port, hi=65535, what="a TCP port number")
    if not isinstance(addr, str) or not addr:
        raise TypeError(f"addr must be an address string such as '127.0.0.1', got {addr!r}")
    m = shared_meter(meter)
    w = (
        default_window(m)
        if window is None
        else _checks.number("window", window, "seconds", lo=0, lo_open=True)
    )
    return Exporter(port, addr, m, w)
