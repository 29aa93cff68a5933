"""The ``nrgloops`` command.

    nrgloops info                       what can be measured and governed here, and why not
    nrgloops measure [-o F] -- CMD ...  energy, time, average and peak power of a command
    nrgloops serve [--port 9108]        a Prometheus exporter of the meter's energy and power
    nrgloops --version
    nrgloops bench substring [...]      the NRG-loop vs system governor sweep
    nrgloops governor restore           undo what a killed run left changed

Exit codes: 0 success; 1 a failure while running; 2 bad input or something
asked for that this machine does not have (nothing was changed); 130 after
Ctrl-C and 143 after SIGTERM (the system restored, finished rows written);
``measure`` returns the command's own exit code; ``governor restore`` returns
1 when a change could not be undone or a bad journal (entry) was skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nrgloops._errors import MeterUnavailable, NrgError

__all__ = ["main"]

EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130


def _err(msg: str) -> None:
    print(f"nrgloops: error: {msg}", file=sys.stderr, flush=True)


class _Live:
    """A status line rewritten in place on a terminal (nothing otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._shown = False

    def __call__(self, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stderr.write("\r" + line[:width].ljust(width))
            sys.stderr.flush()
            self._shown = True

    def log(self, line: str) -> None:
        self.clear()
        print(line, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self._shown:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stderr.write("\r" + " " * width + "\r")
            sys.stderr.flush()
            self._shown = False


# ---------------------------------------------------------------------------
# info


def _meters_report() -> tuple[list[str], str]:
    from nrgloops.meters import KINDS, open_meter

    lines = []
    best = None
    for kind in KINDS:
        if kind == "auto":
            continue
        try:
            m = open_meter(kind)
        except (MeterUnavailable, NrgError, ImportError, OSError, ValueError) as exc:
            lines.append(f"  {kind:<9} refused: {exc}")
            continue
        lines.append(
            f"  {kind:<9} available, {m.label}: {m.description}; domains {', '.join(m.domains)}"
        )
        lines += [f"            skipped {item}" for item in m.skipped]
        if best is None and kind in ("msr", "powercap", "perf"):
            best = f"{kind} ({m.label})"
    return lines, best or "model (estimated: no energy counter can be read here)"


def _governors_report() -> tuple[list[str], str]:
    from nrgloops.governors import (
        CgroupGovernor,
        PowercapGovernor,
        open_governor,
        probe_governors,
    )

    lines = []
    reasons = probe_governors()
    descr = {"powercap": PowercapGovernor().description, "cgroup": CgroupGovernor().description}
    for name, why in reasons.items():
        if why is None:
            lines.append(f"  {name:<9} available: {descr[name]}")
        else:
            lines.append(f"  {name:<9} refused: {why}")
    gov, why = open_governor("auto")
    return lines, (gov.name if gov is not None else "none") + (
        "" if gov is not None else f" ({why})"
    )


def cmd_info(args: argparse.Namespace) -> int:
    from nrgloops import __version__
    from nrgloops._machine import machine_info
    from nrgloops.governors import JournalUntrusted, journal_dir, trusted_dir

    m = machine_info()
    print(f"nrgloops {__version__}")
    print(
        f"machine: {m['cpu_model']}, {m['cores']} cores usable ({m['logical_cpus']} logical CPUs), "
        f"{m['machine']}, Linux {m['kernel']}, Python {m['python']}"
    )
    print(f"running as: {'root' if os.geteuid() == 0 else 'uid ' + str(os.geteuid())}")
    lines, best = _meters_report()
    print("meters:")
    print("\n".join(lines))
    print(f"  --meter auto picks: {best}")
    glines, gbest = _governors_report()
    print("governors:")
    print("\n".join(glines))
    print(f"  --governor auto picks: {gbest}")
    jd = journal_dir()
    try:
        left = sorted(jd.glob("*.json")) if trusted_dir(jd, create=False) else []
    except JournalUntrusted as exc:
        print(f"governor journal: not used: {exc}")
        return 0
    if left:
        print(
            f"governor journal: {jd}: {len(left)} run(s) left changes: "
            "see them with `cat`, undo them with `nrgloops governor restore`"
        )
    else:
        print(f"governor journal: {jd} (no changes left)")
    return 0


# ---------------------------------------------------------------------------
# measure


def cmd_measure(args: argparse.Namespace) -> int:
    from nrgloops.measure import measure

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _err("measure: give a command after --, e.g. `nrgloops measure -- sleep 1`")
        return EXIT_USAGE
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        _err(f"measure: command not found: {cmd[0]}")
        return EXIT_USAGE
    out = None
    if args.output is not None:
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".json", ".csv"):
            _err(f"measure: -o must name a .json or .csv file, got {args.output!r}")
            return EXIT_USAGE
        try:  # before the command runs: no run is lost to a bad path
            out = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            _err(f"measure: -o {args.output}: cannot write there ({exc.strerror or exc})")
            return EXIT_USAGE
    try:
        try:
            result = measure(cmd, args.meter)
        except (MeterUnavailable, ValueError) as exc:
            _err(f"measure: {exc}")
            return EXIT_USAGE
        except OSError as exc:  # the command cannot be run (not executable, ...)
            _err(f"measure: cannot run {cmd[0]}: {exc.strerror or exc}")
            return EXIT_USAGE
        # The meters count the whole machine (a package, or all CPU time):
        # the command's own share is not separated out, and the text says so.
        print(result, file=sys.stderr)
        if out is not None:
            out.write(result.to_json() + "\n" if suffix == ".json" else result.to_csv())
    finally:
        if out is not None:
            out.close()
    return result.exit_status


# ---------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    from nrgloops.export import start_exporter

    # Blocked before the server's threads start, so that they inherit it and
    # the signals wait for sigwait below.
    stop = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        try:
            exporter = start_exporter(args.port, args.addr, args.meter, args.window)
        except (ImportError, MeterUnavailable, ValueError, TypeError, OSError) as exc:
            _err(f"serve: {exc}")
            return EXIT_USAGE
        m = exporter.sampler.meter
        print(
            f"nrgloops: serving {exporter.url} -- {m.label.upper()} by the {m.kind} meter "
            f"({m.description}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        with exporter:
            sig = signal.sigwait(stop)
        print(f"nrgloops: stopped by {signal.Signals(sig).name}", file=sys.stderr)
        return 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------
# bench substring


def _writable_dir(path: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there."""
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".nrgloops-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot write there ({exc.strerror or exc})") from exc
    return d


def cmd_bench_substring(args: argparse.Namespace) -> int:
    from nrgloops.governors import GovernorUnavailable, Terminated, signals_raise

    try:  # the benchmark is a guest: imported only to run it, from its extra
        from nrgloops.bench.substring import Config, SubstringBench, parse_caps
    except ImportError as exc:
        _err(f"bench substring: {exc}")
        return EXIT_USAGE

    # Everything that can be wrong is checked here, before any work: the
    # values by Config.validate (one check each), the governor and the meter
    # by SubstringBench, the output directory by _writable_dir.
    try:
        caps = parse_caps(args.caps) if args.caps is not None else None
        config = Config(
            caps=caps,
            governor=args.governor,
            meter=args.meter,
            policy=args.policy,
            quick=args.quick,
            seed=args.seed,
            size_mb=args.size_mb,
            strings=args.strings,
            target_s=args.target_s,
            idle_s=args.idle_s,
            repeat=args.repeat,
        )
        live = _Live()
        bench = SubstringBench(config, log=live.log, live=live if live.tty else None)
        out = _writable_dir(args.out)
    except (ValueError, TypeError, ImportError, MeterUnavailable, GovernorUnavailable) as exc:
        _err(str(exc))
        return EXIT_USAGE

    status = 0
    interrupted: str | None = None
    t0 = time.monotonic()
    try:
        with signals_raise():
            bench.run()
    except KeyboardInterrupt:
        interrupted, status = "Ctrl-C (SIGINT)", EXIT_SIGINT
    except Terminated as exc:
        interrupted, status = signal.Signals(exc.signum).name, 128 + exc.signum
    except (NrgError, RuntimeError, OSError) as exc:
        live.clear()
        _err(str(exc))
        status = EXIT_FAIL
    finally:
        live.clear()
        # Ignore further Ctrl-C while the finished rows are written.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            paths = bench.write(out, interrupted=interrupted is not None)
        finally:
            signal.signal(signal.SIGINT, old)
    print(bench.table())
    print(f"wrote {', '.join(str(p) for p in paths)} ({time.monotonic() - t0:.0f} s)")
    if interrupted:
        print(
            f"nrgloops: interrupted by {interrupted}: the system is restored; the "
            f"{len(bench.rows)} finished row(s) are in {out}",
            file=sys.stderr,
        )
    return status


# ---------------------------------------------------------------------------
# governor restore


def cmd_governor_restore(args: argparse.Namespace) -> int:
    from nrgloops.governors import governed_trees, journal_dir, restore

    where = Path(args.dir) if args.dir else journal_dir()
    trees = governed_trees() + [Path(t) for t in args.tree or ()]
    result = restore(where, force=args.force, trees=trees)
    for line in result.undone:
        print(f"undone: {line}")
    for line in result.skipped:
        print(f"skipped: {line}")
    for line in result.bad:
        print(f"skipped, bad journal: {line}", file=sys.stderr)
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    if not (result.undone or result.skipped or result.errors or result.bad):
        print(f"nothing to restore: no journal left in {where}")
    return EXIT_FAIL if (result.errors or result.bad) else 0


# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from nrgloops import __version__
    from nrgloops.control import POLICIES
    from nrgloops.governors import GOVERNORS
    from nrgloops.meters import KINDS

    p = argparse.ArgumentParser(
        prog="nrgloops",
        description="Hold a soft power cap or an energy budget from inside your own loops.",
    )
    p.add_argument("--version", action="version", version=f"nrgloops {__version__}")
    sub = p.add_subparsers(dest="command_name", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="meters and governors this machine has, and why not")
    info.set_defaults(func=cmd_info)

    measure = sub.add_parser(
        "measure",
        help="run a command and print its energy, time, average and peak power",
        description=(
            "Runs CMD under the C sampler at the meter's period and prints, like `perf stat`, "
            "its energy per domain and in total, its time, and its average and peak power, "
            "measured or estimated. Exits with CMD's exit status."
        ),
    )
    measure.add_argument("--meter", default="auto", choices=KINDS, help="energy meter (auto)")
    measure.add_argument(
        "-o", "--output", metavar="FILE", help="also write the figures to FILE.json or FILE.csv"
    )
    measure.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    measure.set_defaults(func=cmd_measure)

    serve = sub.add_parser(
        "serve",
        help="a Prometheus exporter of the meter's energy and power",
        description=(
            "Serves /metrics for Prometheus: nrgloops_energy_joules_total and "
            "nrgloops_power_watts per domain, with meter and measured labels. "
            'Needs pip install "nrgloops[prometheus]".'
        ),
    )
    serve.add_argument("--port", type=int, default=9108, help="TCP port (9108)")
    serve.add_argument(
        "--addr",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    serve.add_argument("--meter", default="auto", choices=KINDS, help="energy meter (auto)")
    serve.add_argument("--window", type=float, help="power window, s (default: the meter's)")
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_name", metavar="BENCH")
    bsub.required = True
    sb = bsub.add_parser(
        "substring",
        help="substring search: NRG-loop vs system governor over a sweep of caps",
        description=(
            "Runs the substring-search loop uncapped, as an NRG-loop and under a system "
            "governor over a sweep of soft power caps and writes DIR/substring.{csv,json,png}. "
            'Needs the bench extra: pip install "nrgloops[bench]".'
        ),
    )
    sb.add_argument(
        "--caps",
        help="caps in W, e.g. 30,35,40 (default: between the knob's bottom level and uncapped)",
    )
    sb.add_argument("--governor", default="auto", choices=GOVERNORS, help="system governor (auto)")
    sb.add_argument("--meter", default="auto", choices=KINDS, help="energy meter (auto)")
    sb.add_argument(
        "--policy",
        default="mix",
        choices=POLICIES,
        help="thread knob policy (mix: mixed levels; step: the paper's ramp)",
    )
    sb.add_argument("--out", default="nrgloops-results", help="output directory")
    sb.add_argument("--quick", action="store_true", help="small corpus, 3 caps, about a minute")
    sb.add_argument("--seed", type=int, default=0, help="corpus seed (0)")
    sb.add_argument("--size-mb", type=float, help="corpus size, MiB (16 quick, 64)")
    sb.add_argument("--strings", type=int, help="strings to look up (default: ~TARGET_S uncapped)")
    sb.add_argument("--target-s", type=float, help="seconds of the uncapped run (4 quick, 15)")
    sb.add_argument("--idle-s", type=float, help="seconds of idle measurement (1 quick, 3)")
    sb.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="rounds of the sweep; the figure shows medians with min-max bars "
        "(with --quick, N > 1 repeats one cap, to keep to about a minute)",
    )
    sb.set_defaults(func=cmd_bench_substring)

    gov = sub.add_parser("governor", help="governor maintenance")
    gsub = gov.add_subparsers(dest="governor_cmd", metavar="ACTION")
    gsub.required = True
    rest = gsub.add_parser("restore", help="undo the changes a killed run left")
    rest.add_argument("--force", action="store_true", help="also undo those of runs still alive")
    rest.add_argument("--dir", help="journal directory (default: see `nrgloops info`)")
    rest.add_argument(
        "--tree",
        action="append",
        metavar="DIR",
        help="also restore files under DIR (a governor run on another powercap root); repeatable",
    )
    rest.set_defaults(func=cmd_governor_restore)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    args: Any = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("nrgloops: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:  # `nrgloops info | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
