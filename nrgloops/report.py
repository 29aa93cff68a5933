"""Reports: what a loop did, and at what power and energy.

A loop's figures come from the sampler, never from the loop's hot path: the
windowed power at each sample is pulled from the sampler's ring every
couple of seconds and at the end (peak power, share of time over the cap),
and a timeline point is kept at most every ``dt`` seconds; when the timeline
is full every other point is dropped and ``dt`` doubles, so its memory is
bounded whatever the loop's length.

A loop that holds fewer than two of the sampler's rows (one shorter than the
meter's sampling period) has no energy or power figures: they are NaN in
Python, ``null`` in JSON and "n/a" in text, with the reason in ``note``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nrgloops import _checks
from nrgloops.sampler import DEFAULT_HISTORY_S

if TYPE_CHECKING:
    from nrgloops.meters import Meter
    from nrgloops.sampler import Sampler

__all__ = [
    "MAX_TIMELINE_POINTS",
    "SHORT_LOOP_NOTE",
    "STALE_NOTE",
    "Report",
    "WindowStats",
    "ring_history",
]

MAX_TIMELINE_POINTS = 1000
PULL_EVERY_S = 2.0  # pull at most this far apart...
MIN_PULL_S = 0.5  # ...and at least this far apart, so that long windows share the default ring
SHORT_LOOP_NOTE = "loop shorter than the meter's sampling period"
STALE_NOTE = "power unknown (meter stale) for {s:.3g} s: ran degraded ({n} iterations)"

Value = str | float | int | None
Point = tuple[float, float, Value]


def _fmt_w(w: float | None) -> str:
    return "n/a" if w is None or w != w else f"{w:.3g} W"


def _fmt_num(w: float) -> str:
    return "n/a" if w != w else f"{w:.4g}"


def _csv_num(v: float) -> str:
    return repr(v) if math.isfinite(v) else ""


def _sidecar(path: Path) -> Path:
    """Where ``to_csv`` puts the summary of ``path``: ``PATH.json``."""
    return path.with_name(path.name + ".json")


def _parse_value(v: str) -> Value:
    """A timeline value back from CSV text: None, an int, a float or a str."""
    if v == "":
        return None
    try:
        value = float(v)
    except ValueError:
        return v
    if value.is_integer() and "." not in v and "e" not in v.lower():
        return int(v)
    return value


def ring_history(window: float) -> float:
    """Seconds of history a loop with this window asks of its sampler.

    Each pull reads the windowed power at the samples since the previous
    pull, which needs ``window`` seconds of rows before the oldest of them:
    windows up to ``DEFAULT_HISTORY_S - 2 * MIN_PULL_S`` (9 s) fit the
    default ring, which every other user of the meter shares; a longer one
    gets a ring of its own, with room for two pulls.
    """
    if window + 2.0 * MIN_PULL_S <= DEFAULT_HISTORY_S:
        return DEFAULT_HISTORY_S
    return window + 2.0 * PULL_EVERY_S


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


@dataclass
class Report:
    """What one loop did.

    Attributes:
        kind: "adapt", "truncate" or "perforate".
        iterations: ``{"adapt": n, "alternate": m}`` for adapted loops
            with an alternate body; ``{"adapt": n}`` for an adapted function
            with a knob and no alternate; ``{"adapt": n, "over_cap_at_bottom":
            m}`` for ``with nrg_adapt(cap, knob=k) as loop`` (``m``: the
            ``step()`` calls that returned False, the knob at its bottom and
            the power still over the cap);
            ``{"ran": r, "skipped": s, "left": l}`` for the others (``left``
            is None when the items have no length).
        duration_s: time from the loop's start to its end (or to now), s.
        energy_j: energy between the sampler's first and last rows of the
            loop, J (the rows miss the wall-clock ends by up to one
            sampler period each).
        avg_power_w: energy_j over the time between those two rows, W (not
            energy_j / duration_s, which mixes two different spans).
        peak_power_w: largest windowed average power seen, W.
        over_cap_fraction: share of the loop's time during which the
            windowed power was over the cap (None without a cap).
        measured: False when the meter estimates (then so do these numbers).
            A fake meter (``nrgloops.testing.FakeMeter``) counts as measured
            here, but ``label`` says "simulated".
        meter: the meter's kind.
        window_s: the averaging window of the windowed powers, s.
        cap_w: the power cap, W, or None.
        budget_j: the energy budget, J, or None.
        knob: the knob's final state (value, range, policy, moves,
            reversals), or None.
        running: True for a snapshot of a loop still running.
        timeline: (time since the start in s, windowed power in W, value)
            where value is the variant ("adapt"/"alternate"), the knob's
            real level (``knob.level``, the mix's average: column
            "knob_level"), "run"/"skip" (perforate) or the energy so far in
            J (truncate).
        name: the loop's name (the adapted function's qualified name).
        note: why figures are missing, or "" (a stale meter: see ``stale_s``).
        cap_unreachable_w: how far the cap was under what the bottom level
            (or the alternate) draws, W: the loop could not reach it and ran
            at the bottom; None when every cap was reachable (or unknown).
        cap_bound: False when the cap never bound (the loop ran at full
            speed under it all along); None without a cap or a controller,
            or when it never bound but the power was unknown for a while
            (``stale_s`` > 0: the loop ran degraded then).
        stale_s: seconds during which the windowed power was unknown (the
            meter stale: no good reading for several periods), as seen at
            the loop's ticks; the loop ran degraded meanwhile, and its
            energy and power figures miss that time.
        stale_iterations: iterations that ran degraded (the alternate, the
            knob's bottom, a skip) while the power was unknown.
        carbon_g: emissions of a loop under a CarbonBudget, gCO2eq (the
            energy times the intensity; NaN when the energy is n/a), or None.
        budget_g: the carbon budget, gCO2eq, or None.
        intensity: the intensity used: its ``source``, its ``kind``
            ("average" or "marginal") and ``mean_g_per_kwh`` over the loop.

    energy_j, avg_power_w, peak_power_w (and over_cap_fraction under a cap)
    are NaN when fewer than two sampler rows fall inside the loop (see
    ``note``): no measurement covers it.
    """

    kind: str
    iterations: dict[str, int | None]
    duration_s: float
    energy_j: float
    avg_power_w: float
    peak_power_w: float
    over_cap_fraction: float | None
    measured: bool
    meter: str
    window_s: float
    cap_w: float | None = None
    budget_j: float | None = None
    knob: dict[str, Any] | None = None
    running: bool = False
    name: str = ""
    timeline: list[Point] = field(default_factory=list)
    note: str = ""
    cap_unreachable_w: float | None = None
    cap_bound: bool | None = None
    carbon_g: float | None = None
    budget_g: float | None = None
    intensity: dict[str, Any] | None = None
    stale_s: float = 0.0
    stale_iterations: int = 0

    @property
    def label(self) -> str:
        """What the numbers are: "measured", "estimated", or "simulated" (a fake meter)."""
        if self.meter == "fake":
            return "simulated"
        return "measured" if self.measured else "estimated"

    # -- export ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timeline"] = [list(p) for p in self.timeline]
        d["label"] = self.label
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: a missing figure (NaN) is ``null``."""
        return json.dumps(_strict(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        d = dict(d)
        d.pop("label", None)
        for key in ("energy_j", "avg_power_w", "peak_power_w"):
            if d.get(key) is None:  # a missing figure, null in JSON
                d[key] = math.nan
        if d.get("over_cap_fraction") is None and d.get("cap_w") is not None:
            d["over_cap_fraction"] = math.nan
        if d.get("carbon_g") is None and d.get("budget_g") is not None:
            d["carbon_g"] = math.nan
        if d.get("intensity") and d["intensity"].get("mean_g_per_kwh") is None:
            d["intensity"] = {**d["intensity"], "mean_g_per_kwh": math.nan}
        d["timeline"] = [
            (float(p[0]), math.nan if p[1] is None else float(p[1]), p[2])
            for p in d.get("timeline", [])
        ]
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    def value_column(self) -> str:
        """What the timeline's third entry is, as a column name: "knob_level",
        "variant" (adapt / alternate), "action" (run / skip) or "energy_j"."""
        if self.knob is not None:
            return "knob_level"
        return {"truncate": "energy_j", "perforate": "action"}.get(self.kind, "variant")

    def timeline_columns(self) -> dict[str, list[Any]]:
        """The timeline as columns: time_s (since the start), power_w (the
        windowed power), the value column (see ``value_column``) and label
        (measured / estimated / simulated, the same on every row)."""
        return {
            "time_s": [p[0] for p in self.timeline],
            "power_w": [p[1] for p in self.timeline],
            self.value_column(): [p[2] for p in self.timeline],
            "label": [self.label] * len(self.timeline),
        }

    def summary(self) -> dict[str, Any]:
        """The figures as one flat row (no timeline): ``iterations_adapt``,
        ``knob_value``..., None for a missing figure."""
        flat: dict[str, Any] = {}
        for key, value in _strict(self.to_dict()).items():
            if key == "timeline":
                continue
            if isinstance(value, dict):
                flat.update({f"{key}_{k}": v for k, v in value.items()})
            elif key != "knob":  # knob None: no knob columns
                flat[key] = value
        return flat

    def to_pandas(self, what: str = "timeline") -> Any:
        """A pandas DataFrame: the timeline (one row per point, the summary in
        ``df.attrs["report"]``), or with ``what="summary"`` one row of the
        figures.  Needs pandas (``pip install "nrgloops[pandas]"``)."""
        if what not in ("timeline", "summary"):
            raise ValueError(f"what must be 'timeline' or 'summary', got {what!r}")
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                'Report.to_pandas needs pandas: pip install "nrgloops[pandas]"'
            ) from None
        if what == "summary":
            return pd.DataFrame([self.summary()])
        df = pd.DataFrame(self.timeline_columns())
        df.attrs["report"] = self.summary()
        return df

    def timeline_table(self, max_rows: int = 20) -> str:
        """The timeline as a text table, at most ``max_rows`` rows (evenly
        picked, the last one always in)."""
        max_rows = _checks.count("max_rows", max_rows, lo=2)
        points = self.timeline
        if len(points) > max_rows:
            step = (len(points) - 1) / (max_rows - 1)
            points = [points[round(i * step)] for i in range(max_rows)]
        col = self.value_column()
        lines = [f"{'time s':>9} {'power W':>9}  {col.replace('_j', ' J').replace('_', ' ')}"]
        for t, w, v in points:
            value = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append(f"{t:>9.3f} {_fmt_num(w):>9}  {value}")
        shown = f"{len(points)} of {len(self.timeline)} points" if points else "no points"
        lines.append(f"(power {self.label}, {self.window_s:g} s windows; {shown})")
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> Path:
        """Write the timeline as CSV that ``pandas.read_csv`` reads as it is
        (columns as in ``timeline_columns``; a missing power is an empty
        field), and the summary as JSON beside it, in ``PATH.json``; returns
        that path."""
        p = Path(_checks.path("path", path))
        cols = self.timeline_columns()
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(cols))
            for row in zip(*cols.values(), strict=True):
                t, pw, v, label = row
                w.writerow([repr(t), _csv_num(pw), "" if v is None else v, label])
        side = _sidecar(p)
        summary = self.to_dict()
        del summary["timeline"]
        side.write_text(json.dumps(_strict(summary), indent=2, allow_nan=False) + "\n")
        return side

    @classmethod
    def from_csv(cls, path: str | Path) -> Report:
        """Read what ``to_csv`` wrote (the CSV and its ``PATH.json``)."""
        p = Path(_checks.path("path", path))
        side = _sidecar(p)
        try:
            summary = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(summary, dict) or "kind" not in summary:
                raise ValueError
        except FileNotFoundError:
            raise ValueError(
                f"{p} is not a CSV written by Report.to_csv: no summary {side.name} beside it"
            ) from None
        except ValueError:
            raise ValueError(f"{side} is not the summary Report.to_csv writes") from None
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:2] != ["time_s", "power_w"]:
            raise ValueError(f"{p} is not a CSV written by Report.to_csv")
        timeline: list[Point] = []
        for t, pw, v, *_ in rows[1:]:
            timeline.append((float(t), math.nan if pw == "" else float(pw), _parse_value(v)))
        summary["timeline"] = timeline
        return cls.from_dict(summary)

    # -- reading -----------------------------------------------------------
    def __str__(self) -> str:
        lab = self.label
        head = f"{self.kind} loop" + (f" {self.name}" if self.name else "")
        if self.running:
            head += " (running)"
        its = ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in self.iterations.items())
        missing = not math.isfinite(self.energy_j)
        energy = "energy n/a" if missing else f"{self.energy_j:.4g} J {lab}"
        lines = [
            f"{head}: {self.duration_s:.3f} s, {energy} ({self.meter} meter)",
            f"  iterations: {its}",
            f"  power ({lab}): average {_fmt_w(self.avg_power_w)}, peak "
            f"{_fmt_w(self.peak_power_w)} over {self.window_s:g} s windows",
        ]
        if self.cap_w is not None:
            frac = self.over_cap_fraction
            ok = frac is not None and math.isfinite(frac)
            share = f"{100 * frac:.1f}% of the time" if ok else "n/a"  # type: ignore[operator]
            lines.append(f"  cap {self.cap_w:.4g} W: over it {share}")
            if self.cap_unreachable_w is not None:
                lines.append(
                    f"  cap not reachable: the bottom level draws "
                    f"{self.cap_unreachable_w:.3g} W more than the cap"
                )
            elif self.cap_bound is False:
                lines.append("  the cap never bound: full speed all along")
        if self.budget_j is not None:
            used = "n/a" if missing else f"{100 * self.energy_j / self.budget_j:.1f}%"
            lines.append(f"  budget {self.budget_j:.4g} J: used {used}")
        if self.carbon_g is not None:
            c, i = self.carbon_g, self.intensity or {}
            ok = math.isfinite(c)
            mean = i.get("mean_g_per_kwh", math.nan)
            at = f"{mean:.4g} g/kWh on average, " if mean == mean else ""
            lines.append(
                f"  carbon: {f'{c:.4g} gCO2eq {lab}' if ok else 'n/a'} ({at}{i.get('kind')} "
                f"intensity from {i.get('source')})"
            )
            if self.budget_g is not None:
                used = f"{100 * c / self.budget_g:.1f}%" if ok else "n/a"
                lines.append(f"  budget {self.budget_g:.4g} gCO2eq: used {used}")
        if self.knob is not None:
            k = self.knob
            lines.append(
                f"  knob ({k['policy']}): level {k.get('level', k['value']):.4g} in "
                f"[{k['lo']}, {k['hi']}] (grid value now {k['value']}), "
                f"{k['moves']} moves, {k['reversals']} reversals"
            )
        if self.note:
            lines.append(f"  {'n/a: ' if missing else ''}{self.note}")
        if self.running:
            lines.append(
                "  (a snapshot: the loop runs on, and this spans its start until now, idle "
                "time included; close() or the end of its `with` ends it)"
            )
        return "\n".join(lines)


class WindowStats:
    """Window statistics of one run's power, from a sampler: the one place
    their definitions live (docs/architecture.md, "One measurement path").

    * average power: the energy between two readings of the counter (``begin``
      and ``end``) over the time between them;
    * peak power: the largest windowed power (the average over the trailing
      ``window`` s) at a sample whose whole window lies inside the run -- one
      whose window reaches back before ``t0`` averages what came before; a
      run shorter than one window has no such sample, and then all of its
      samples count;
    * share over the cap: the share of the run's covered time, time-weighted
      between samples, during which the windowed power was over ``cap``, over
      the same samples as the peak.

    ``trace_every`` > 0 keeps a (time, windowed power) point at most that
    often, in ``trace``, for a figure.  ``pull()`` takes the windowed power
    at every sample since the previous pull, from the sampler's ring: call it
    at least every ``pull_every`` s so that the ring still holds them (and
    once at the end).  Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        sampler: Sampler,
        window: float,
        *,
        domain: str | None = None,
        cap_w: float | None = None,
        t0: float | None = None,
        trace_every: float = 0.0,
    ) -> None:
        self.sampler = sampler
        self.window = _checks.number("window", window, "seconds", lo=0.0, lo_open=True)
        self.domain = sampler.meter.domains[sampler.meter.domain_index(domain)] if domain else None
        # the cap may change between pulls (a PowerCap changed at run time)
        self.cap = math.inf if cap_w is None else _checks.number("cap_w", cap_w, "watts")
        self.t0 = time.monotonic() if t0 is None else _checks.number("t0", t0, "seconds")
        trace_every = _checks.number("trace_every", trace_every, "seconds", lo=0.0)
        self.after = self.t0  # samples up to here are counted
        self.pulled = self.t0
        self.last_w = math.nan  # the newest windowed power pulled, W
        # [0]: samples whose window lies inside the run; [1]: the others
        self._peak = [-math.inf, -math.inf]
        self._over = [0.0, 0.0]
        self._covered = [0.0, 0.0]
        self._ends: list[tuple[float, float]] = []
        self._stop = math.inf  # end(): the end reading's time
        # (time, windowed power) at most every trace_every s (0: none), for a figure
        self.trace_every = trace_every
        self.trace: list[tuple[float, float]] = []
        # pull often enough that the samples since the last pull, each with
        # its window of rows before it, are still in the ring
        self.pull_every = min(PULL_EVERY_S, max(MIN_PULL_S, (sampler.history - window) / 2.0))
        self._max_series = int(sampler.history / sampler.period) + 128
        self._gap = max(10 * sampler.period, 0.05)  # a late sampler thread is not a gap

    # -- feeding ---------------------------------------------------------------
    def pull(self, now: float | None = None) -> None:
        """Take the windowed power at every sample since the last pull."""
        self.pulled = time.monotonic() if now is None else now
        times, watts = self.sampler.series(
            self.after, self.window, self.domain, max_points=self._max_series
        )
        if self._stop < math.inf:  # ended: no sample after the end reading counts
            times = [t for t in times if t <= self._stop]
            watts = watts[: len(times)]
        prev = self.after
        cap, gap, period = self.cap, self._gap, self.sampler.period
        inside_from = self.t0 + self.window
        peak, over, covered = self._peak, self._over, self._covered
        for t, w in zip(times, watts, strict=True):
            dt = t - prev
            prev = t
            if dt > gap:  # rows overwritten before this pull: count no more than one period
                dt = period
            k = 0 if t >= inside_from else 1
            covered[k] += dt
            if w > cap:
                over[k] += dt
            if w > peak[k]:
                peak[k] = w
        if self.trace_every > 0:
            trace, every = self.trace, self.trace_every
            for t, w in zip(times, watts, strict=True):
                if not trace or t - trace[-1][0] >= every:
                    trace.append((t, w))
        if watts:
            self.last_w = watts[-1]
        self.after = prev

    def begin(self, reading: tuple[float, float] | None = None) -> None:
        """The counter's reading at the run's start: (time, s; energy, J);
        default the sampler's newest row."""
        self._ends[:] = [reading if reading is not None else self.sampler.latest(self.domain)]

    def end(self, reading: tuple[float, float] | None = None) -> None:
        """The counter's reading at the run's end (default the newest row), and
        a last pull of the samples up to it (a reading taken at the end may be
        given a little later, once the samples up to it are in the ring)."""
        if not self._ends:
            raise RuntimeError("WindowStats.end() before begin()")
        self._ends[1:] = [reading if reading is not None else self.sampler.latest(self.domain)]
        self._stop = self._ends[1][0]
        self.pull()

    # -- the figures -------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        """Time between the two counter readings, s (NaN before ``end``)."""
        return self._ends[1][0] - self._ends[0][0] if len(self._ends) == 2 else math.nan

    @property
    def energy_j(self) -> float:
        """Energy between the two counter readings, J (NaN before ``end``)."""
        return self._ends[1][1] - self._ends[0][1] if len(self._ends) == 2 else math.nan

    @property
    def average_w(self) -> float:
        """Average power, W: NaN when the readings span no time."""
        span = self.duration_s
        return self.energy_j / span if span > 0 else math.nan

    def _which(self) -> int:
        return 0 if self._covered[0] > 0 or self._peak[0] > -math.inf else 1

    @property
    def peak_w(self) -> float:
        """Peak windowed power, W: NaN before any sample."""
        peak = self._peak[self._which()]
        return peak if peak > -math.inf else math.nan

    @property
    def over_s(self) -> float:
        """Seconds over the cap so far, at the samples whose window lies inside
        the run (a counter: it never decreases)."""
        return self._over[0]

    @property
    def covered_s(self) -> float:
        """Time the counted samples cover, s."""
        return self._covered[self._which()]

    def over_share(self) -> float | None:
        """Share over the cap: None without a cap, NaN before any sample."""
        if self.cap == math.inf:
            return None
        k = self._which()
        return self._over[k] / self._covered[k] if self._covered[k] > 0 else math.nan


class Recorder(WindowStats):
    """A loop's window statistics and its bounded timeline (not thread-safe:
    the loop calls it under its own lock)."""

    def __init__(
        self,
        sampler: Sampler,
        window: float,
        domain: str | None,
        cap_w: float | None,
        t0: float,
        max_points: int = MAX_TIMELINE_POINTS,
    ) -> None:
        super().__init__(sampler, window, domain=domain, cap_w=cap_w, t0=t0)
        self.max_points = max(2, max_points)
        self.points: list[Point] = []
        self.dt = window / 4.0
        self.last_mark = -math.inf

    @property
    def peak(self) -> float:
        """The peak windowed power, W, -inf before any sample."""
        p = self.peak_w
        return -math.inf if math.isnan(p) else p

    def mark(self, now: float, power: float, value: Value) -> None:
        """Add a timeline point, at most one per ``dt`` seconds."""
        if now - self.last_mark < self.dt:
            return
        self.last_mark = now
        self.points.append((now - self.t0, power, value))
        if len(self.points) >= self.max_points:
            del self.points[1::2]
            self.dt *= 2.0

    def over_fraction(self) -> float | None:
        """Share of the covered time over the cap; None without a cap, NaN
        before any sample was covered."""
        return self.over_share()

    def report(
        self,
        first: tuple[float, float],
        last: tuple[float, float],
        *,
        meter: Meter,
        period: float,
        **facts: Any,
    ) -> Report:
        """The loop's Report, its figures by the definitions above.

        ``first`` and ``last``: the sampler rows (time, J) at the loop's start
        and now (or its end): the energy and the average power are the
        counter's between them.  Fewer than two rows inside the loop: no
        figures (NaN) and the reason in ``note``.  A loop with rows but no
        sample pulled yet has its average as its peak.  ``facts``: the
        Report's other fields (kind, iterations, duration_s, cap_w, ...).
        """
        self._ends[:] = [first, last]
        over = self.over_share()
        stale_s = facts.get("stale_s", 0.0)
        # a stale meter also leaves the rows without a span: say the real reason
        note = STALE_NOTE.format(s=stale_s, n=facts.get("stale_iterations", 0)) if stale_s else ""
        if self.duration_s > 0:
            energy, avg = self.energy_j, self.average_w
            peak = avg if math.isnan(self.peak_w) else self.peak_w
        else:
            # one row: nothing measured the loop (the published power is
            # still 0 W before a fresh sampler's second row)
            energy = avg = peak = math.nan
            over = None if over is None else math.nan
            note = note or f"{SHORT_LOOP_NOTE} ({period:g} s)"
        return Report(
            energy_j=energy,
            avg_power_w=avg,
            peak_power_w=peak,
            over_cap_fraction=over,
            measured=meter.measured,
            meter=meter.kind,
            window_s=self.window,
            timeline=list(self.points),
            note=note,
            **facts,
        )
