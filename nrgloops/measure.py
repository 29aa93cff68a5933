"""``nrgloops measure -- CMD``: the energy and power of one command, like ``perf stat``.

The command runs under the C sampler at the meter's own period (1 ms for
RAPL, 10 ms for the model).  Its energy is the meter's cumulative count at
the command's start and end, each read between the two sampler rows around
it (linear within one sampling period), per domain and in total; its time is
the wall clock from just before the fork to the moment it was reaped.  The
peak is the highest windowed average power among the windows that lie
inside the run, or the run's own average when that is higher (a run shorter
than two windows can have its energy at its ends, which sliding windows
weigh less), so peak >= average always.  A command shorter than one
sampling period has no energy or power figures: "n/a", with the reason.

Signals: a Ctrl-C at the terminal already reaches the command (it is in the
terminal's foreground process group); a SIGINT or SIGTERM sent to this
process alone is forwarded to the command.  Either way the measurement
waits for the command to end and reports its exit status.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nrgloops import _checks
from nrgloops._ffi import ffi, lib
from nrgloops.constraints import default_window
from nrgloops.meters import Meter, open_meter
from nrgloops.report import WindowStats
from nrgloops.sampler import Sampler

__all__ = ["Measurement", "measure"]

PULL_S = 1.0  # read the ring this often while the command runs (it holds ~10 s)
_EDGE_WINDOW = 1e-9  # a "window" shorter than a period: the power of one sampling interval
_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_SI_KERNEL = 0x80  # si_code of a signal the kernel raised (the terminal's Ctrl-C)


@dataclass
class Measurement:
    """What ``measure`` saw of one command.

    Attributes:
        command: the command and its arguments.
        exit_status: the command's exit status; 128 + N when a signal N killed it.
        duration_s: wall-clock time from just before the fork until it was reaped, s.
        energy_j: energy per domain of the meter, J (NaN when n/a); domains
            may overlap (a package contains its cores).
        total_j: the meter's total (``total_domains``, never overlapping), J.
        avg_power_w: total_j / duration_s, W.
        peak_power_w: the highest windowed average inside the run, or the
            average if higher, W (see the module's docstring).
        window_s: the averaging window of the peak, s.
        period_s: the sampling period (or the counter's update interval if
            slower), s.
        meter, measured, description, total_domains: which meter, and whether
            it measures or estimates.
        signals: the signals that came while the command ran (SIGINT from
            the terminal reached the command too; others were forwarded).
        note: why figures are missing or approximate, or "".
    """

    command: list[str]
    exit_status: int
    duration_s: float
    energy_j: dict[str, float]
    total_j: float
    avg_power_w: float
    peak_power_w: float
    window_s: float
    period_s: float
    meter: str
    measured: bool
    description: str
    total_domains: list[str]
    signals: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def label(self) -> str:
        """ "measured", "estimated", or "simulated" (a fake meter)."""
        if self.meter == "fake":
            return "simulated"
        return "measured" if self.measured else "estimated"

    def to_dict(self) -> dict[str, Any]:
        """The fields and the label; a missing figure (NaN) is None."""
        d = {k: _none_if_nan(v) for k, v in asdict(self).items()}
        d["energy_j"] = {k: _none_if_nan(v) for k, v in self.energy_j.items()}
        d["label"] = self.label
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: a missing figure is ``null``."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        """One row per domain and one for the total; ``pandas.read_csv`` reads it as it is
        (a missing figure is an empty field).  The peak is of the total (the one
        windowed series the sampler keeps statistics of): a domain's row has it
        when that domain is the whole total, and leaves it empty otherwise."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            ["command", "exit_status", "domain", "energy_j", "duration_s", "avg_power_w"]
            + ["peak_power_w", "window_s", "period_s", "meter", "label", "note"]
        )
        cmd = shlex.join(self.command)
        whole = self.total_domains[0] if len(self.total_domains) == 1 else None
        rows = [
            (d, e, self.peak_power_w if d == whole else math.nan) for d, e in self.energy_j.items()
        ]
        rows.append(("total", self.total_j, self.peak_power_w))
        for domain, energy, peak in rows:
            avg = energy / self.duration_s if self.duration_s > 0 else math.nan
            w.writerow(
                [cmd, self.exit_status, domain, _csv(energy), repr(self.duration_s), _csv(avg)]
                + [_csv(peak), repr(self.window_s), repr(self.period_s), self.meter, self.label]
                + [self.note]
            )
        return buf.getvalue()

    def __str__(self) -> str:
        lab = self.label
        cmd = shlex.join(self.command)
        lines = ["", f" Energy stats (exit status {self.exit_status}) for: {cmd}", ""]
        for d, e in self.energy_j.items():
            lines.append(f"  {_num(e, 4):>14} J   {d:<16} {lab}")
        total = f"({' + '.join(self.total_domains)})"
        lines.append(f"  {_num(self.total_j, 4):>14} J   {'total':<16} {lab} {total}")
        lines.append("")
        lines.append(f"  {self.duration_s:>14.6f} s   time elapsed")
        lines.append(f"  {_num(self.avg_power_w, 3):>14} W   average power    {lab}")
        lines.append(
            f"  {_num(self.peak_power_w, 3):>14} W   peak power       {lab} "
            f"(highest {self.window_s:g} s window inside the run, or the average)"
        )
        lines.append("")
        source = self.description
        lines.append(
            f" {lab.upper()} by the {self.meter} meter ({source}), for the whole machine, "
            f"sampled every {self.period_s:g} s"
        )
        if self.signals:
            lines.append(f" signals passed on to the command: {', '.join(self.signals)}")
        if self.note:
            lines.append(f" n/a: {self.note}" if math.isnan(self.total_j) else f" {self.note}")
        return "\n".join(lines)


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _csv(v: float) -> str:
    return "" if not math.isfinite(v) else repr(v)


def _num(v: float, digits: int) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


class _Rows:
    """Reads the sampler's ring: its latest row, and the power of the
    sampling intervals after a time."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.names: list[str | None] = [*sampler.meter.domains, None]  # None: the total
        self._t = ffi.new("double *")
        self._j = ffi.new("double[]", lib.NRG_MAX_DOMAINS + 1)

    def latest(self) -> tuple[float, list[float]]:
        """(time, cumulative joules per column: each domain, then the total)."""
        lib.nrg_sampler_latest(self.sampler._ptr(), self._t, self._j)
        return self._t[0], list(self._j[0 : len(self.names)])

    def intervals(self, after: float, until: float = math.inf) -> list[list[tuple[float, float]]]:
        """Per column, (row time, power over the interval ending there, W) for
        the rows in (after, until]."""
        out = []
        for name in self.names:
            ts, ws = self.sampler.series(after, _EDGE_WINDOW, name)
            out.append([(t, w) for t, w in zip(ts, ws, strict=True) if t <= until])
        return out


def measure(command: Sequence[str], meter: str | Meter = "auto") -> Measurement:
    """Run ``command`` (no shell) and measure its energy and power.

    Args:
        command: the program and its arguments, e.g. ``["sleep", "1"]``.
        meter: a meter kind ("auto", "msr", "powercap", "perf", "model",
            "nvml", "pyrapl") or a Meter.

    Raises:
        TypeError / ValueError: a bad argument (named in the message).
        FileNotFoundError / PermissionError: the command cannot be run.
        MeterUnavailable: the meter cannot be read here.
    """
    if isinstance(command, (str, bytes)) or not isinstance(command, Sequence):
        raise TypeError(
            f"command must be a list of strings (the program and its arguments), "
            f"not {type(command).__name__}"
        )
    cmd = [_checks.path(f"command[{i}]", c) for i, c in enumerate(command)]
    if not cmd:
        raise ValueError("command must name a program to run, got an empty list")
    m = open_meter(meter)
    window = default_window(m)
    with Sampler(m) as sampler:
        return _run(cmd, m, sampler, window)


def _run(cmd: list[str], m: Meter, sampler: Sampler, window: float) -> Measurement:
    rows = _Rows(sampler)
    period = max(sampler.period, m.resolution_s)
    first: list[list[tuple[float, float]]] = []  # the interval after the start row
    t_a, j_a = rows.latest()  # read before the clock: t_a <= t_start
    t_start = time.monotonic()
    # the peak: the one window-statistics path, from the start row on
    stats = WindowStats(sampler, window, t0=t_a)

    def pull() -> None:
        nonlocal first
        if not first or not all(first):
            first = [col[:1] for col in rows.intervals(t_a)]
        stats.pull()

    forwarded: list[str] = []
    proc = subprocess.Popen(cmd)
    try:
        status = _wait(proc, pull, min(PULL_S, stats.pull_every), forwarded)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    t_end = time.monotonic()
    # wait for the first row after the end (a loaded machine may be late)
    deadline = t_end + max(1.0, 20 * sampler.period)
    t_b, j_b = rows.latest()
    while t_b < t_end and time.monotonic() < deadline:
        time.sleep(sampler.period / 2)
        t_b, j_b = rows.latest()
    if not first or not all(first):
        first = [col[:1] for col in rows.intervals(t_a)]
    duration = t_end - t_start
    note = ""
    if duration < period:
        energies = [math.nan] * len(rows.names)
        note = (
            f"the command ran {duration:.3g} s, shorter than one sampling period of the "
            f"{m.kind} meter ({period:g} s): no energy or power figure covers it"
        )
    else:
        energies = []
        last = rows.intervals(t_end, t_b)
        for k in range(len(rows.names)):
            e_start = j_a[k]
            if first[k]:  # the part of the first interval before the start
                t1, p1 = first[k][0]
                e_start += p1 * (min(t_start, t1) - t_a)
            e_end = j_b[k]
            if last[k]:  # the part of the intervals after the end
                (t1, p1), rest = last[k][0], last[k][1:]
                e_end -= p1 * (t1 - t_end)
                prev = t1
                for t, p in rest:
                    e_end -= p * (t - prev)
                    prev = t
            energies.append(max(0.0, e_end - e_start))
            if k == len(rows.names) - 1:  # the total: its readings at the run's ends
                stats.begin((t_start, e_start))
                stats.end((t_end, e_end))
        if t_b < t_end:
            note = f"the sampler's last row is {t_end - t_b:.3g} s before the end (a late thread)"
    total = energies[-1]
    avg = total / duration if duration > 0 and math.isfinite(total) else math.nan
    # only a run longer than one window (and a period) has a window inside it
    peak = math.nan
    if math.isfinite(avg):
        inside = stats.peak_w if duration >= window + period else math.nan
        peak = max(inside, avg) if math.isfinite(inside) else avg
    return Measurement(
        command=cmd,
        exit_status=status,
        duration_s=duration,
        energy_j=dict(zip(m.domains, energies[:-1], strict=True)),
        total_j=total,
        avg_power_w=avg,
        peak_power_w=peak,
        window_s=window,
        period_s=period,
        meter=m.kind,
        measured=m.measured,
        description=m.description,
        total_domains=list(m.total_domains),
        signals=forwarded,
        note=note,
    )


def _wait(proc: subprocess.Popen[bytes], pull: Any, every: float, forwarded: list[str]) -> int:
    """Wait for ``proc``, calling ``pull`` every ``every`` s, forwarding SIGINT
    and SIGTERM sent to this process alone; returns the exit status."""
    if threading.current_thread() is not threading.main_thread():
        while True:
            try:
                return _status(proc.wait(timeout=every))
            except subprocess.TimeoutExpired:
                pull()
    # Block the signals and take them with sigtimedwait, which says who sent
    # each one.  (The command was forked before the block: it does not
    # inherit it.  The sampler thread blocks every signal.)
    waited = {*_FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        while proc.poll() is None:
            info = signal.sigtimedwait(waited, every)
            if info is None:
                pull()
            elif info.si_signo != signal.SIGCHLD:
                sig = signal.Signals(info.si_signo)
                # The terminal's Ctrl-C reached the whole foreground group,
                # the command included: do not send it twice.
                if not (sig == signal.SIGINT and info.si_code == _SI_KERNEL):
                    _send(proc, sig)
                forwarded.append(sig.name)
    except KeyboardInterrupt:  # one that came before the block
        _send(proc, signal.SIGINT)
        forwarded.append("SIGINT")
        proc.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert proc.returncode is not None
    return _status(proc.returncode)


def _send(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just ended
        os.kill(proc.pid, sig)


def _status(returncode: int) -> int:
    """A shell's exit status: 128 + N for a command killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode
