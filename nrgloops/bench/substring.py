"""The substring-search benchmark: an NRG-loop against a system governor.

After the NRG-Loops paper's substring search (Kambadur & Kim, CGO 2016): a
list of strings is looked up, one per loop iteration, in a text corpus, each
search spread over ``threads`` threads.  Three modes do the same work:

* ``uncapped``: all cores, no cap;
* ``nrgloops``: the loop holds the soft cap itself, ``nrg_adapt(PowerCap(cap),
  knob=Knob(lo, cores, step))`` on the thread count (steps of 2 threads, of 1
  on machines with fewer than 4 cores): by default the library's mixed knob,
  which alternates the two thread counts around the cap so that the average
  power sits at the cap; ``policy="step"`` is the paper's -2/+2 ramp;
* ``governor``: the uncapped workload under a system governor set to the cap
  (the RAPL power limit, or a cgroup CPU quota moved by a power feedback loop).

Every run is measured the same way, from one sampler on one meter that counts
the whole machine (the cgroup governor's workload is a child process), by
``nrgloops.report.WindowStats``, the project's one definition of average,
peak and share over the cap (docs/architecture.md): the energy between two
counter reads at the run's edges over the time between them, and the peak and
the share of time over the cap from the windowed power at each sample whose
window lies inside the run.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nrgloops import _checks
from nrgloops._machine import available_memory, cpu_count, machine_info
from nrgloops.bench import check_extra
from nrgloops.bench.corpus import make_corpus, make_patterns
from nrgloops.bench.search import Searcher
from nrgloops.constraints import PowerCap, default_window
from nrgloops.control import POLICIES, Knob
from nrgloops.governors import GOVERNORS, Governor, open_governor
from nrgloops.loops import nrg_adapt
from nrgloops.meters import KINDS, Meter, open_meter
from nrgloops.report import WindowStats
from nrgloops.sampler import Sampler

__all__ = [
    "COLUMNS",
    "MODES",
    "Config",
    "Row",
    "SubstringBench",
    "cap_warnings",
    "check_caps",
    "figure",
    "format_table",
    "parse_caps",
    "plot",
    "sweep_caps",
    "thread_knob",
]

COLUMNS = (
    "mode",
    "cap_w",
    "avg_power_w",
    "peak_power_w",
    "over_cap_fraction",
    "energy_j",
    "energy_rel",
    "time_s",
    "time_rel",
    "measured",
    "meter",
    "repeat",
    "background_cpus",
    "disturbed",
)
MODES = ("uncapped", "nrgloops", "governor")
BUSY_WARN_CPUS = 0.15  # other programs' load worth a warning, in CPUs
BOTTOM_TRIES = 3  # measurements of the knob's bottom level while other programs disturb it
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Caps between the power of the knob's bottom level (measured) and the
# uncapped power, as fractions of that span: the caps an NRG-loop can hold.
QUICK_FRACTIONS = (0.25, 0.5, 0.75)
QUICK_REPEAT_FRACTIONS = (0.5,)  # --quick --repeat N: one cap N times keeps to about a minute
FULL_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


def parse_caps(text: str) -> list[float]:
    """ "30,35,40" -> [30.0, 35.0, 40.0]: the text's numbers only (ValueError
    naming an entry that is not one); ``Config.validate`` checks the values."""
    caps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            caps.append(float(part.removesuffix("W").removesuffix("w")))
        except ValueError:
            raise ValueError(f"--caps: {part!r} is not a number of watts") from None
    return caps


def check_caps(caps: object) -> list[float]:
    """The one check of a list of caps: numbers of watts > 0, each once."""
    return _checks.numbers("caps", caps, "watts", lo=0.0, lo_open=True, distinct=True)


def cap_warnings(
    caps: Sequence[float], idle_w: float, uncapped_w: float, bottom_w: float, knob: Knob[int]
) -> list[str]:
    """A line for each cap outside what the modes can hold, saying which
    mode cannot: below idle none can; below what the NRG-loop's bottom
    level (its lowest thread count) drew when measured, ``bottom_w``, only
    a governor may; at or above uncapped there is nothing to hold."""
    out = []
    for cap in caps:
        if cap < idle_w:
            out.append(
                f"cap {cap:g} W is below the idle power ({idle_w:.2f} W): no mode can hold it"
            )
        elif cap < bottom_w:
            out.append(
                f"cap {cap:g} W is below what the NRG-loop's bottom level ({knob.lo:g} "
                f"thread(s)) drew, {bottom_w:.2f} W (measured before the sweep): "
                "the NRG-loop cannot hold it; a governor may"
            )
        elif cap >= uncapped_w:
            out.append(
                f"cap {cap:g} W is at or above the uncapped power ({uncapped_w:.2f} W): nothing "
                "to hold, every mode runs as uncapped"
            )
    return out


def sweep_caps(bottom_w: float, uncapped_w: float, fractions: Sequence[float]) -> list[float]:
    """Caps at ``fractions`` of the way from the power of the knob's bottom
    level to the uncapped power, rounded to 0.1 W, each once, increasing."""
    if not uncapped_w > bottom_w * 1.02:
        raise RuntimeError(
            f"the uncapped run ({uncapped_w:.2f} W) drew no more than the NRG-loop's bottom "
            f"level ({bottom_w:.2f} W), so there is no range of caps an NRG-loop can hold "
            "(was another program busy meanwhile, or is there one core?); give the caps "
            "with --caps"
        )
    # Rounded, close fractions of a narrow span can meet: each cap once.
    return sorted({round(bottom_w + f * (uncapped_w - bottom_w), 1) for f in fractions})


def thread_knob(cores: int, policy: str = "mix") -> Knob[int]:
    """The paper's thread knob: steps of 2 threads (2, 4, ... up to the cores),
    steps of 1 on machines with fewer than 4 cores; the policy "mix" (the
    library's default) or "step" (the paper's ramp), "aimd", "pi"."""
    step = 2 if cores >= 4 else 1
    lo = step
    hi = lo + step * ((cores - lo) // step)
    return Knob(lo, hi, step, policy=policy)


@dataclass
class Config:
    """What to run.  ``None`` means: the default for ``quick`` or not."""

    caps: list[float] | None = None
    governor: str = "auto"
    meter: str | Meter = "auto"  # a kind, or a Meter (tests: FakeMeter)
    policy: str = "mix"
    quick: bool = False
    seed: int = 0
    size_mb: float | None = None  # corpus size, MiB (default 16 quick, 64 full)
    strings: int | None = None  # strings to look up (default: ~target_s uncapped)
    target_s: float | None = None  # seconds the uncapped run should last (4 quick, 15)
    idle_s: float | None = None  # seconds of idle measurement (1 quick, 3)
    window: float | None = None  # power window, s (default: the meter's)
    repeat: int = 1  # rounds of the whole sweep (uncapped and every cap)

    def validate(self) -> None:
        if self.caps is not None:
            self.caps = check_caps(self.caps)
        self.seed = _checks.count("seed", self.seed, lo=0)  # numpy refuses a negative seed
        _checks.choice("policy", self.policy, POLICIES)
        _checks.choice("governor", self.governor, GOVERNORS)
        if not isinstance(self.meter, Meter) and self.meter not in KINDS:
            raise ValueError(f"meter must be one of {', '.join(KINDS)}, got {self.meter!r}")
        if self.size_mb is not None:
            _checks.number("size_mb", self.size_mb, "MiB", lo=0.0, lo_open=True)
        for name in ("target_s", "idle_s"):  # a day at most: longer is a typo
            v = getattr(self, name)
            if v is not None:
                _checks.number(name, v, "seconds", lo=0.0, hi=86_400.0, lo_open=True)
        if self.window is not None:
            _checks.number("window", self.window, "seconds", lo=0.0, lo_open=True)
        if self.strings is not None:  # a list of strings held in memory
            _checks.count("strings", self.strings, lo=1, hi=10_000_000)
        free = available_memory()
        # The corpus is built in chunks, joined, then cut: about 3x its size at once.
        if free is not None and 3 * self.size_bytes > free:
            raise ValueError(
                f"size_mb must fit in memory: a corpus of {self.size_bytes / (1 << 20):g} MiB "
                f"needs about 3x that while it is built, more than the "
                f"{free / (1 << 20):.0f} MiB available here (MemAvailable), got {self.size_mb!r}"
            )
        _checks.count("repeat", self.repeat, lo=1, hi=100, what="a number of rounds")

    @property
    def size_bytes(self) -> int:
        mb = self.size_mb if self.size_mb is not None else (16 if self.quick else 64)
        return max(4096, int(mb * (1 << 20)))

    @property
    def target(self) -> float:
        return self.target_s if self.target_s is not None else (4.0 if self.quick else 15.0)

    @property
    def idle(self) -> float:
        return self.idle_s if self.idle_s is not None else (1.0 if self.quick else 3.0)

    @property
    def bottom(self) -> float:
        """Seconds the knob's bottom level is measured: twice the idle's."""
        return 2.0 * self.idle

    @property
    def fractions(self) -> Sequence[float]:
        if self.quick:
            return QUICK_REPEAT_FRACTIONS if self.repeat > 1 else QUICK_FRACTIONS
        return FULL_FRACTIONS


@dataclass
class Row:
    """One (mode, cap) run; ``details`` go to the JSON only."""

    mode: str
    cap_w: float | None
    avg_power_w: float
    peak_power_w: float
    over_cap_fraction: float | None
    energy_j: float
    energy_rel: float
    time_s: float
    time_rel: float
    measured: bool
    meter: str
    details: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0  # the round (0, 1, ...)
    background_cpus: float = math.nan  # CPUs other programs kept busy meanwhile
    disturbed: bool = False  # background_cpus over BUSY_WARN_CPUS: their power is in the figures

    def values(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


class _Counter:
    """A counter in shared memory: a forked child's progress is seen here."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, 8)  # anonymous and MAP_SHARED: survives fork

    def add(self, n: int = 1) -> None:
        struct.pack_into("<q", self._mem, 0, self.value + n)

    @property
    def value(self) -> int:
        return int(struct.unpack_from("<q", self._mem, 0)[0])

    def reset(self) -> None:
        struct.pack_into("<q", self._mem, 0, 0)


class _Measure:
    """One run: its window statistics (``nrgloops.report.WindowStats``, pulled
    from the shared sampler in a thread: the ring holds ~10 s) and the CPU
    time other programs used meanwhile."""

    def __init__(
        self,
        sampler: Sampler,
        window: float,
        cap: float | None,
        tick: Callable[[float], None] | None = None,
    ) -> None:
        self.sampler, self._tick = sampler, tick
        self._window, self._cap = window, cap
        self.stats = WindowStats(sampler, window, cap_w=cap)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nrg-bench-measure", daemon=True)
        self.c0 = self.c1 = (0.0, 0.0)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.stats.pull()
            if self._tick is not None:
                self._tick(self.stats.last_w)

    def _cpu(self) -> tuple[float, float]:
        """(busy CPU seconds of the machine, CPU seconds of this process and
        its waited-for children): their difference is other programs' work."""
        busy = math.nan
        try:
            with open("/proc/stat", encoding="ascii") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) / _CLK_TCK  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system

    @property
    def background_cpus(self) -> float:
        """CPUs that other programs kept busy during the run, on average."""
        if not self.duration > 0:
            return math.nan
        return max(0.0, ((self.c1[0] - self.c0[0]) - (self.c1[1] - self.c0[1])) / self.duration)

    def _read(self) -> tuple[float, float]:
        # The counter read now, not the sampler's last sample: exact at the
        # run's edges even for a run of a few sampler periods.
        r = self.sampler.meter.read()
        return r.time, sum(r.joules[d] for d in self.sampler.meter.total_domains)

    def __enter__(self) -> _Measure:
        self.c0 = self._cpu()
        self.stats = WindowStats(self.sampler, self._window, cap_w=self._cap)  # from now
        self.stats.begin(self._read())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        self.c1 = self._cpu()
        self._stop.set()
        self._thread.join()
        self.stats.end(end)

    @property
    def duration(self) -> float:
        return self.stats.duration_s

    @property
    def energy(self) -> float:
        return self.stats.energy_j


def _search_all(corpus: bytes, patterns: Sequence[bytes], threads: int, done: _Counter) -> int:
    """The uncapped workload; it makes its own thread pool (it may run in a
    forked child, where this process's threads do not exist)."""
    total = 0
    with Searcher(corpus, max_threads=threads) as s:
        for p in patterns:
            total += s.count(p, threads)
            done.add()
    return total


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class SubstringBench:
    """Set up (meter, governor: errors here, before any work), then ``run()``.

    ``log`` gets one line per step; ``live`` (optional) gets a status line
    about every half second while a run lasts.  Rows accumulate in
    ``rows`` as runs finish, so an interrupted sweep keeps what it did.
    """

    def __init__(
        self,
        config: Config,
        log: Callable[[str], None] = _log_stderr,
        live: Callable[[str], None] | None = None,
        powercap_root: str = "/sys/class/powercap",
    ) -> None:
        check_extra()  # matplotlib too, before any work rather than at the figure
        config.validate()
        self.config = config
        self.log, self.live = log, live
        self.meter: Meter = open_meter(config.meter)
        self.window = config.window or default_window(self.meter)
        self.governor: Governor | None
        self.governor, self.governor_why = open_governor(
            config.governor, powercap_root, control_period=self.window
        )
        if self.governor is not None and config.caps:
            _check_governor_caps(self.governor, config.caps)  # before anything is changed
        self.cores = cpu_count()
        self.rows: list[Row] = []
        self.idle_w: float | None = None
        self.idle_background = math.nan
        self.bottom_w: float | None = None  # the knob's bottom level, measured
        self.bottom_background = math.nan
        self.caps: list[float] = list(config.caps) if config.caps else []
        self.corpus_info: dict[str, Any] = {}
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self._done = _Counter()
        self._base: Row | None = None
        self._round = 0

    # -- pieces --------------------------------------------------------------
    def _label(self) -> str:
        return self.meter.label

    def _row(self, mode: str, cap: float | None, m: _Measure, details: dict[str, Any]) -> Row:
        base = self._base
        e, t = m.energy, m.duration
        details["background_cpus"] = m.background_cpus
        row = Row(
            mode=mode,
            cap_w=cap,
            avg_power_w=m.stats.average_w,
            peak_power_w=m.stats.peak_w,
            over_cap_fraction=m.stats.over_share(),
            energy_j=e,
            energy_rel=e / base.energy_j if base else 1.0,
            time_s=t,
            time_rel=t / base.time_s if base else 1.0,
            measured=self.meter.measured,
            meter=self.meter.kind,
            details=details,
        )
        row.repeat = self._round
        row.background_cpus = m.background_cpus
        row.disturbed = m.background_cpus > BUSY_WARN_CPUS
        self.rows.append(row)
        over = "" if row.over_cap_fraction is None else f", over cap {row.over_cap_fraction:.0%}"
        self.log(
            f"  {mode:<8} {_cap_text(cap):>8}: {t:6.2f} s, {e:8.1f} J, avg {row.avg_power_w:.2f} W"
            f", peak {row.peak_power_w:.2f} W{over}, energy x{row.energy_rel:.2f} "
            f"({self._label()})"
        )
        if m.background_cpus > BUSY_WARN_CPUS:
            self.log(
                f"  note: other programs kept {m.background_cpus:.2f} CPUs busy during this run; "
                "a meter of the whole machine counts their power too"
            )
        return row

    def _measure(self, sampler: Sampler, mode: str, cap: float | None, total: int) -> _Measure:
        self._done.reset()
        live = self.live

        def tick(watts: float) -> None:
            if live is not None:
                live(
                    f"  {mode:<8} {_cap_text(cap):>8}: {self._done.value}/{total} strings, "
                    f"{watts:.1f} W ({self._label()})"
                )

        return _Measure(sampler, self.window, cap, tick)

    def _calibrate(self, corpus: bytes) -> int:
        """Strings for an uncapped run of about ``target`` seconds."""
        probe = make_patterns(corpus, 64, seed=self.config.seed + 7)
        with Searcher(corpus, max_threads=self.cores) as s:
            s.count(probe[0], self.cores)  # page the corpus in
            t0, n = time.monotonic(), 0
            while time.monotonic() - t0 < 0.8 or n < 4:
                s.count(probe[n % len(probe)], self.cores)
                n += 1
            per = (time.monotonic() - t0) / n
        return max(8, int(round(self.config.target / per)))

    def _measure_bottom(self, sampler: Sampler, corpus: bytes, patterns: Sequence[bytes]) -> None:
        """The power of the knob's bottom level (its lowest thread count),
        measured for ``bottom_s``: the least an NRG-loop can draw, so the
        lowest cap it can hold (the caps swept go from here to uncapped).

        A meter of the whole machine counts other programs too, so the level
        is the least of each try's average and its quietest 0.5 s window, and
        a try that other programs disturbed is made again, up to
        ``BOTTOM_TRIES`` in all."""
        lo = int(thread_knob(self.cores, self.config.policy).lo)
        seconds = self.config.bottom
        best, background = math.inf, math.nan
        for attempt in range(1, BOTTOM_TRIES + 1):
            self.log(
                f"[bottom] {lo} thread(s), the knob's bottom level, for {seconds:g} s"
                + (f" (try {attempt}/{BOTTOM_TRIES})" if attempt > 1 else "")
            )
            quietest = math.inf
            with Searcher(corpus, max_threads=lo) as s, _Measure(sampler, self.window, None) as m:
                t0, i, next_poll = time.monotonic(), 0, 0.5
                while (now := time.monotonic() - t0) < seconds:
                    s.count(patterns[i % len(patterns)], lo)
                    i += 1
                    if now >= next_poll:  # a window wholly inside the run
                        quietest = min(quietest, sampler.power(0.5))
                        next_poll = now + 0.25
            average = m.energy / m.duration
            level = min(average, quietest)
            self.log(
                f"  bottom level: {level:.2f} W ({self._label()}; average {average:.2f} W, "
                f"quietest 0.5 s window {quietest:.2f} W)"
            )
            if level < best:
                best, background = level, m.background_cpus
            if not m.background_cpus > BUSY_WARN_CPUS:
                break
            self.log(
                f"  note: other programs kept {m.background_cpus:.2f} CPUs busy meanwhile; "
                "their power is in this level"
                + ("" if attempt == BOTTOM_TRIES else ": measuring again")
            )
        self.bottom_w, self.bottom_background = best, background
        if attempt > 1:
            self.log(f"  bottom level taken: {best:.2f} W, the least of {attempt} tries")

    def _run_nrgloops(
        self, sampler: Sampler, corpus: bytes, patterns: Sequence[bytes], cap: float
    ) -> Row:
        knob = thread_knob(self.cores, self.config.policy)
        power_cap = PowerCap(cap, window=self.window, meter=self.meter)
        total = threads_sum = 0
        searcher = Searcher(corpus, max_threads=self.cores)
        with (
            self._measure(sampler, "nrgloops", cap, len(patterns)) as m,
            searcher,
            nrg_adapt(power_cap, knob=knob) as loop,
        ):
            # The paper's loop: one string per iteration, with as many
            # threads as the knob says; the library moves the knob (and,
            # with "mix", alternates the two counts around the cap).
            for p in patterns:
                loop.step()
                k = int(knob.value)
                total += searcher.count(p, k)
                threads_sum += k
                self._done.add()
        rep = loop.report
        return self._row(
            "nrgloops",
            cap,
            m,
            {
                "matches": total,
                "mean_threads": threads_sum / max(1, len(patterns)),
                "knob": rep.knob,
            },
        )

    def _run_governor(
        self, sampler: Sampler, corpus: bytes, patterns: Sequence[bytes], cap: float
    ) -> Row:
        gov = self.governor
        assert gov is not None
        done, cores = self._done, self.cores
        with self._measure(sampler, "governor", cap, len(patterns)) as m:
            trace = gov.run(
                cap,
                lambda: _search_all(corpus, patterns, cores, done),
                lambda: sampler.power(self.window),
            )
        details: dict[str, Any] = {"matches": trace.result, "governor": gov.name}
        mean = trace.mean_setting()
        if mean is not None:
            details[f"mean_{trace.setting}"] = mean
        return self._row("governor", cap, m, details)

    # -- the sweep -------------------------------------------------------------
    def run(self) -> None:
        cfg = self.config
        gov = self.governor.name if self.governor else "none"
        self.log(
            f"nrgloops bench substring: {self.cores} cores, meter {self.meter.kind} "
            f"({self._label()}: {self.meter.description}), governor {gov}"
        )
        if self.governor is None:
            self.log(f"  {self.governor_why}: the governor rows are left out")
        with Sampler(self.meter) as sampler:
            sampler.watch(self.window)
            # 1. idle power, before anything runs
            self.log(f"[idle] measuring idle power for {cfg.idle:g} s")
            with _Measure(sampler, self.window, None) as m:
                time.sleep(cfg.idle)
            self.idle_w = m.energy / m.duration
            self.idle_background = m.background_cpus
            self.log(f"  idle: {self.idle_w:.2f} W ({self._label()})")
            if m.background_cpus > BUSY_WARN_CPUS:
                self.log(
                    f"  note: the machine is not idle: other programs keep "
                    f"{m.background_cpus:.2f} CPUs busy; the figures will include their power"
                )
            # 2. the corpus and the strings
            corpus = make_corpus(cfg.size_bytes, cfg.seed)
            n = cfg.strings or self._calibrate(corpus)
            patterns = make_patterns(corpus, n, cfg.seed)
            self.corpus_info = {"bytes": len(corpus), "seed": cfg.seed, "strings": n}
            self.log(
                f"[corpus] {len(corpus) / (1 << 20):.0f} MiB, {n} strings "
                f"(uncapped run ~{cfg.target:g} s)"
            )
            # 3. uncapped, then the caps: ``repeat`` rounds of both, each
            # round's ratios against its own uncapped run
            modes = ["nrgloops"] + (["governor"] if self.governor is not None else [])
            expected: int | None = None
            k = 0
            for rnd in range(cfg.repeat):
                self._round = rnd
                tag = f" (round {rnd + 1}/{cfg.repeat})" if cfg.repeat > 1 else ""
                self.log(f"[uncapped] all cores, no cap{tag}")
                self._base = None
                with self._measure(sampler, "uncapped", None, n) as m:
                    total = _search_all(corpus, patterns, self.cores, self._done)
                self._base = self._row("uncapped", None, m, {"matches": total})
                if expected is None:
                    expected = total
                    self.corpus_info["matches"] = total
                    self._measure_bottom(sampler, corpus, patterns)
                    self._first_round_done(self._base)
                elif total != expected:
                    raise RuntimeError(
                        f"uncapped round {rnd + 1} found {total} matches, the first {expected}"
                    )
                runs = len(self.caps) * len(modes) * cfg.repeat
                for cap in self.caps:
                    for mode in modes:
                        k += 1
                        self.log(f"[{k}/{runs}] {mode} at a cap of {cap:g} W{tag}")
                        if mode == "nrgloops":
                            row = self._run_nrgloops(sampler, corpus, patterns, cap)
                        else:
                            row = self._run_governor(sampler, corpus, patterns, cap)
                        if row.details.get("matches") != total:
                            raise RuntimeError(
                                f"{mode} at {cap:g} W found {row.details.get('matches')} "
                                f"matches, uncapped found {total}: the runs did different work"
                            )

    def _first_round_done(self, base: Row) -> None:
        """After the first uncapped run: the governor's model, and the caps."""
        assert self.idle_w is not None and self.bottom_w is not None
        span = base.avg_power_w - self.idle_w
        if self.governor is not None and span > 0:
            # The governor's model, from what we just measured.
            self.governor = self.governor.with_model(
                idle_w=self.idle_w, watts_per_cpu=span / self.cores
            )
        if not self.caps:
            self.caps = sweep_caps(self.bottom_w, base.avg_power_w, self.config.fractions)
        if self.governor is not None:
            _check_governor_caps(self.governor, self.caps)
        knob = thread_knob(self.cores, self.config.policy)
        warnings = cap_warnings(self.caps, self.idle_w, base.avg_power_w, self.bottom_w, knob)
        for line in warnings:
            self.log(f"  warning: {line}")

    # -- results ---------------------------------------------------------------
    def document(self, interrupted: bool = False) -> dict[str, Any]:
        """Everything about the sweep, JSON-able."""
        from nrgloops import __version__

        cfg = self.config
        return {
            "benchmark": "substring",
            "nrgloops": __version__,
            "started": self.started.isoformat(timespec="seconds"),
            "interrupted": interrupted,
            "machine": machine_info(),
            "meter": {
                "kind": self.meter.kind,
                "measured": self.meter.measured,
                "label": self.meter.label,
                "description": self.meter.description,
                "fallback_reason": self.meter.fallback_reason,
                "window_s": self.window,
            },
            "governor": {
                "kind": self.governor.name if self.governor else None,
                "description": self.governor.description if self.governor else None,
                "why": self.governor_why,
            },
            "config": {
                "caps_w": self.caps,
                "policy": cfg.policy,
                "quick": cfg.quick,
                "knob": _knob_text(self.cores, cfg.policy),
            },
            "corpus": self.corpus_info,
            "idle_w": self.idle_w,
            "idle_background_cpus": self.idle_background,
            "bottom_w": self.bottom_w,
            "bottom_threads": int(thread_knob(self.cores, cfg.policy).lo),
            "bottom_background_cpus": self.bottom_background,
            "columns": list(COLUMNS),
            "rows": [{**r.values(), "details": r.details} for r in self.rows],
        }

    def write(self, out: str | Path, interrupted: bool = False) -> list[Path]:
        """Write ``substring.csv``, ``.json`` and ``.png`` into ``out``."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        doc = self.document(interrupted)
        paths = [d / "substring.csv", d / "substring.json", d / "substring.png"]
        with open(paths[0], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in self.rows:
                w.writerow(["" if v is None else _csv_value(v) for v in r.values().values()])
        text = json.dumps(_finite(doc), indent=1, default=str, allow_nan=False)
        paths[1].write_text(text + "\n", encoding="utf-8")
        plot(doc, paths[2])
        return paths

    def table(self) -> str:
        return format_table(self.rows, self.meter)


def _check_governor_caps(gov: Governor, caps: Sequence[float]) -> None:
    lo, hi = gov.cap_range()
    bad = [c for c in caps if not lo <= c <= hi]
    if bad:
        raise ValueError(
            f"caps {', '.join(f'{c:g}' for c in bad)} W: the {gov.name} governor can set caps "
            f"in [{lo:g}, {hi:g}] W here; nothing was changed"
        )


def _cap_text(cap: float | None) -> str:
    return "no cap" if cap is None else f"{cap:g} W"


def _knob_text(cores: int, policy: str) -> str:
    k = thread_knob(cores, policy)
    return f"threads {k.lo:g}..{k.hi:g} step {k.step:g}, policy {policy}"


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _median(xs: Sequence[float]) -> float:
    v = sorted(x for x in xs if math.isfinite(x))
    if not v:
        return math.nan
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def _order(r: Row) -> tuple[bool, float, int, int]:
    return (r.cap_w is not None, r.cap_w or 0.0, MODES.index(r.mode), r.repeat)


def format_table(rows: Sequence[Row], meter: Meter) -> str:
    """The rows as a text table, units in the header, measured/estimated said;
    runs other programs disturbed are flagged, and with several rounds the
    median and range of each (mode, cap) follow."""
    rounds = 1 + max((r.repeat for r in rows), default=0)
    head = (
        f"{'mode':<9}{'cap W':>7}{'round':>6}{'avg W':>8}{'peak W':>8}{'over cap':>9}"
        f"{'energy J':>10}{'E/uncap':>8}{'time s':>8}{'t/uncap':>8}{'load':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=_order):
        over = "" if r.over_cap_fraction is None else f"{r.over_cap_fraction:.0%}"
        cap = "" if r.cap_w is None else f"{r.cap_w:g}"
        load = "" if not math.isfinite(r.background_cpus) else f"{r.background_cpus:.2f}"
        lines.append(
            f"{r.mode:<9}{cap:>7}{r.repeat + 1:>6}{r.avg_power_w:>8.2f}{r.peak_power_w:>8.2f}"
            f"{over:>9}{r.energy_j:>10.1f}{r.energy_rel:>8.2f}{r.time_s:>8.2f}{r.time_rel:>8.2f}"
            f"{load:>6}{' *' if r.disturbed else ''}"
        )
    if any(r.disturbed for r in rows):
        lines.append(
            f"* disturbed: other programs kept more than {BUSY_WARN_CPUS:g} CPUs busy (load, "
            "in CPUs) during the run; a meter of the whole machine counts their power too"
        )
    if rounds > 1:
        lines.append("")
        lines.append(f"over {rounds} rounds: median [min - max]")
        keys = {(r.mode, r.cap_w) for r in rows}
        for key in sorted(keys, key=lambda k: (k[1] is not None, k[1] or 0.0, MODES.index(k[0]))):
            group = [r for r in rows if (r.mode, r.cap_w) == key]
            parts = []
            for name, unit, attr in (
                ("energy", " J", "energy_j"),
                ("E/uncap", "", "energy_rel"),
                ("time", " s", "time_s"),
            ):
                v = [getattr(r, attr) for r in group]
                parts.append(f"{name} {_median(v):.3g} [{min(v):.3g} - {max(v):.3g}]{unit}")
            cap = _cap_text(key[1])
            n_bad = sum(r.disturbed for r in group)
            flag = f", {n_bad} disturbed" if n_bad else ""
            lines.append(f"  {key[0]:<9}{cap:>8}: {'; '.join(parts)} ({len(group)} runs{flag})")
    lines.append(
        f"powers and energies {meter.label.upper()} by the {meter.kind} meter ({meter.description})"
    )
    return "\n".join(lines)


def _stats(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values; NaNs when there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return (math.nan, math.nan, math.nan)
    return (_median(v), min(v), max(v))


def plot(doc: dict[str, Any], path: str | Path) -> None:
    """Draw ``figure(doc)`` into ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(doc)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def figure(doc: dict[str, Any]) -> Any:
    """The paper-style figure: energy relative to uncapped against the cap,
    and the achieved power against the cap, one line per mode.

    Each point is the median over the rounds with a bar from the smallest to
    the largest run; every run is also drawn, those other programs disturbed
    as crosses.  Both axes start at zero (a ratio and a power: zooming in
    would make noise look like a trend); each cap is drawn as a short black
    bar at its own height, so a single cap shows too; the legends sit under
    the plots, off the data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    machine, meter = doc["machine"], doc["meter"]
    rounds = 1 + max((int(r.get("repeat") or 0) for r in rows), default=0)
    fig, (ax_e, ax_p) = plt.subplots(1, 2, figsize=(11, 4.6))
    styles = {"nrgloops": ("tab:green", "o"), "governor": ("tab:red", "s")}
    gov = doc["governor"]["kind"] or "none"
    policy = doc.get("config", {}).get("policy") or "?"
    names = {
        "nrgloops": f"NRG-loop, policy {policy}",
        "governor": f"system governor ({gov})",
    }
    caps_all = sorted({r["cap_w"] for r in rows if r["cap_w"] is not None})
    gaps = [b - a for a, b in itertools.pairwise(caps_all)]
    # A cap's bar (half-width): a fifth of the closest caps' spacing, so bars never meet.
    width = 0.2 * min(gaps) if gaps else (caps_all[0] if caps_all else 1.0) * 0.04
    spread = "median, bars min-max" if rounds > 1 else "one run each"
    tops = [1.0]
    ptops: list[float] = []
    disturbed_drawn: set[Any] = set()  # the axes whose legend has the cross already
    for k, (mode, (color, marker)) in enumerate(styles.items()):
        caps = sorted({r["cap_w"] for r in rows if r["mode"] == mode and r["cap_w"] is not None})
        if not caps:
            continue
        dx = (k - 0.5) * width * 0.5  # the modes side by side at a cap
        for ax, key, what in (
            (ax_e, "energy_rel", ""),
            (ax_p, "avg_power_w", ": average"),
            (ax_p, "peak_power_w", f": peak ({meter['window_s']:g} s window)"),
        ):
            med, lo, hi = [], [], []
            for c in caps:
                group = [r for r in rows if r["mode"] == mode and r["cap_w"] == c]
                m, a, b = _stats([r[key] for r in group])
                med.append(m)
                lo.append(m - a)
                hi.append(b - m)
                for r in group:
                    v = r[key]
                    if v is None or not math.isfinite(v):
                        continue
                    bad = bool(r.get("disturbed"))
                    ax.plot(
                        c + dx,
                        v,
                        marker="x" if bad else marker,
                        color="black" if bad else color,
                        markersize=6 if bad else 3,
                        alpha=0.9 if bad else 0.35,
                        linestyle="none",
                        label="disturbed run" if bad and ax not in disturbed_drawn else None,
                    )
                    if bad:
                        disturbed_drawn.add(ax)
                    (tops if ax is ax_e else ptops).append(v)
            peak = key == "peak_power_w"
            ax.errorbar(
                [c + dx for c in caps],
                med,
                yerr=[lo, hi] if rounds > 1 else None,
                marker=marker,
                color=color,
                linestyle=":" if peak else "-",
                fillstyle="none" if peak else "full",
                capsize=3,
                label=f"{names[mode]}{what}",
            )
    base = [r for r in rows if r["mode"] == "uncapped"]
    if base:
        m, a, b = _stats([r["energy_j"] for r in base])
        if rounds > 1 and m > 0:
            ax_e.axhspan(a / m, b / m, color="gray", alpha=0.15, label="uncapped runs, min-max")
        pm, pa, pb = _stats([r["avg_power_w"] for r in base])
        ax_p.axhline(pm, color="gray", linestyle="--", linewidth=1, label="uncapped average")
        if rounds > 1:
            ax_p.axhspan(pa, pb, color="gray", alpha=0.15)
        ptops.append(pb)
    ax_e.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uncapped")
    if caps_all:  # a bar at each cap's height: visible for one cap as for many
        ax_p.hlines(
            caps_all,
            [c - width for c in caps_all],
            [c + width for c in caps_all],
            color="black",
            linewidth=2.5,
            label="the cap",
        )
        ptops += caps_all
    if doc.get("idle_w"):
        ax_p.axhline(doc["idle_w"], color="gray", linestyle=":", linewidth=1, label="idle")
    if doc.get("bottom_w"):
        threads = doc.get("bottom_threads")
        ax_p.axhline(
            doc["bottom_w"],
            color="tab:green",
            linestyle="-.",
            linewidth=1,
            label=f"NRG-loop's bottom level ({threads} thread(s)), measured",
        )
    label = meter["label"]
    for ax in (ax_e, ax_p):
        ax.set_xlabel("soft power cap (W)")
        if caps_all:
            ax.set_xticks(caps_all)
            ax.set_xlim(caps_all[0] - 3 * width, caps_all[-1] + 3 * width)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.16),
                ncol=2,
                fontsize=7,
                frameon=False,
            )
    ax_e.set_ylim(0, max(t for t in tops if math.isfinite(t)) * 1.12)
    ax_p.set_ylim(0, max([t for t in ptops if math.isfinite(t)] or [1.0]) * 1.12)
    ax_e.set_ylabel("energy relative to uncapped (same round)")
    ax_e.set_title(f"energy ({label}; {spread})", fontsize=10)
    ax_p.set_ylabel(f"power (W, {label})")
    ax_p.set_title(f"achieved power ({label}; {spread})", fontsize=10)
    title = (
        f"Substring search on {machine['cpu_model']} ({machine['cores']} cores), "
        f"{meter['kind']} meter, {rounds} round{'s' if rounds > 1 else ''}"
    )
    if not meter["measured"]:
        title += " — power ESTIMATED, not measured"
    if doc.get("interrupted"):
        title += " (interrupted: partial)"
    fig.suptitle(title, fontsize=11)
    notes = []
    if doc.get("idle_w") is not None and base:
        base_w, base_s = (
            _stats([r["avg_power_w"] for r in base]),
            _stats([r["time_s"] for r in base]),
        )
        bottom = doc.get("bottom_w")
        at_bottom = f", bottom level {bottom:.1f} W" if bottom else ""
        notes.append(
            f"idle {doc['idle_w']:.1f} W{at_bottom}, uncapped {base_w[0]:.1f} W in "
            f"{base_s[0]:.1f} s; "
            f"{meter['description']}"
        )
    disturbed = [r for r in rows if r.get("disturbed")]
    if disturbed:
        notes.append(
            f"{len(disturbed)} of {len(rows)} runs disturbed (crosses): other programs kept more "
            f"than {BUSY_WARN_CPUS:g} CPUs busy, and the whole-machine meter counts their power too"
        )
    if notes:
        fig.text(0.5, -0.02, "\n".join(notes), ha="center", va="top", fontsize=8, color="dimgray")
    fig.tight_layout()
    return fig
