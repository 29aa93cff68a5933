"""The pyrapl meter: an adapter for users who already have pyRAPL set up.

pyRAPL (``pip install nrgloops[pyrapl]``) reads
``/sys/class/powercap/intel-rapl/intel-rapl:N/energy_uj`` (and the ``dram``
subzone) through Python file objects.  Here a Python daemon thread polls its
``Sensor.energy()`` every ``period`` seconds, undoes the counter wrap (pyRAPL
does not), and pushes cumulative joules into a C push source; the C sampler
and the loops read that source, so pyRAPL is never on a hot path.

Prefer the powercap meter where you can: it reads the same counters from C
several times more cheaply and without a Python thread.  The thread stops
when the meter is closed or garbage collected; a forked child has no such
thread, so open a new meter there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from nrgloops import _checks
from nrgloops._errors import MeterUnavailable
from nrgloops._ffi import check, ffi, lib, new_handle
from nrgloops.meters._base import Meter, keep_domains
from nrgloops.meters.powercap import wrap_modulus_nj

__all__ = ["PyRaplMeter", "import_pyrapl", "open_pyrapl"]

UJ = 1e-6
_DEVICES = ("package", "dram")  # pyRAPL's Device.PKG = 0, Device.DRAM = 1
# As in the C counter source: a step above 1 kW over the interval (plus 50 ms
# of slack) is a counter reset, not energy.
WRAP_BOUND_WATTS = 1000.0
RESET_SLACK_S = 0.05


def _moduli(sensor: Any) -> dict[int, float]:
    """Wrap modulus (uJ, 2^32 RAPL units, exact: see powercap.wrap_modulus_nj)
    per position of energy(), found beside the energy_uj files pyRAPL holds
    open; {} where it cannot be found."""
    out: dict[int, float] = {}
    apis = getattr(sensor, "_device_api", None)
    if not isinstance(apis, dict):
        return out
    for device, api in apis.items():
        files = getattr(api, "_sys_files", None) or []
        sockets = getattr(api, "_socket_ids", None) or []
        for socket, f in zip(sockets, files, strict=False):
            name = getattr(f, "name", None)
            if not isinstance(name, str):
                continue
            try:
                with open(os.path.join(os.path.dirname(name), "max_energy_range_uj")) as r:
                    modulus = wrap_modulus_nj(int(r.read().strip())) / 1000
            except (OSError, ValueError):  # ValueError: not a number, or not a range
                continue
            out[int(socket) * 2 + int(device)] = modulus
    return out


class _Poller:
    """The polling thread's state; holds no reference to the meter."""

    def __init__(
        self,
        source: Any,
        sensor: Any,
        positions: Sequence[int],
        moduli: dict[int, float],
        first: Sequence[float],
        period: float,
    ) -> None:
        self.source = source
        self.sensor = sensor
        self.positions = list(positions)
        self.moduli = moduli
        self.last = list(first)
        self.total = [0.0] * len(positions)
        self.buf = ffi.new("double[]", len(positions))
        self.period = period
        self.stop = threading.Event()
        self.errors = 0
        self.resets = 0
        self.polls = 0
        self.last_t = time.monotonic()

    def push(self) -> None:
        for i, j in enumerate(self.total):
            self.buf[i] = j
        check(lib.nrg_push(self.source, time.monotonic(), self.buf), "pyrapl meter: push")

    def poll(self) -> None:
        values = self.sensor.energy()
        now = time.monotonic()
        bound_uj = WRAP_BOUND_WATTS * (now - self.last_t + RESET_SLACK_S) / UJ
        self.last_t = now
        for i, pos in enumerate(self.positions):
            raw = float(values[pos])
            if raw < 0:  # pyRAPL's "not available"
                self.errors += 1
                continue
            delta = raw - self.last[i]
            if delta < 0:
                modulus = self.moduli.get(pos)
                if modulus is None:  # a wrap of unknown size: lose this interval
                    self.errors += 1
                    delta = 0.0
                else:
                    delta += modulus
            if delta > bound_uj:  # a reset (resume, driver reload): not energy
                self.resets += 1
                delta = 0.0
            self.total[i] += delta * UJ
            self.last[i] = raw
        self.polls += 1
        self.push()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                self.poll()
            except Exception:  # a polling thread must not die
                self.errors += 1


class PyRaplMeter(Meter):
    """A meter fed by pyRAPL from a daemon thread; ``close()`` stops it."""

    _poller: _Poller
    _thread: threading.Thread

    def close(self) -> None:
        """Stop the polling thread (also done when the meter is collected)."""
        self._poller.stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5 * self._poller.period + 1.0)

    @property
    def poll_errors(self) -> int:
        """Polls of pyRAPL that failed or found a wrap of unknown size."""
        return self._poller.errors

    @property
    def resets(self) -> int:
        """Counter resets the polling thread saw and did not book."""
        return self._poller.resets

    @property
    def polling(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> PyRaplMeter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def import_pyrapl() -> Any:
    """Import pyRAPL without its import-time warnings on the root logger
    (about optional pymongo / pandas outputs), which would also install a
    stderr handler on the application's root logger."""
    root = logging.getLogger()
    quiet = logging.NullHandler()

    def not_pyrapl(record: logging.LogRecord) -> bool:
        return f"{os.sep}pyRAPL{os.sep}" not in record.pathname

    added = not root.handlers
    if added:
        root.addHandler(quiet)  # keeps logging.warning() from calling basicConfig()
    root.addFilter(not_pyrapl)
    try:
        import pyRAPL
    finally:
        root.removeFilter(not_pyrapl)
        if added:
            root.removeHandler(quiet)
    return pyRAPL


def _make_sensor() -> Any:
    try:
        pyRAPL = import_pyrapl()  # the package's own name
    except ImportError:
        raise MeterUnavailable(
            "pyrapl meter: pyRAPL is not installed: pip install nrgloops[pyrapl]"
        ) from None
    sensor = getattr(pyRAPL, "_sensor", None)  # set up by the user's pyRAPL.setup()
    if sensor is None:
        try:
            pyRAPL.setup()
        except Exception as exc:  # pyRAPL raises many kinds
            raise MeterUnavailable(
                f"pyrapl meter: pyRAPL.setup() failed ({type(exc).__name__}: {exc}); pyRAPL "
                "reads /sys/class/powercap/intel-rapl/*/energy_uj: it needs RAPL and read "
                "access (see the powercap meter's message for the fix)"
            ) from None
        sensor = pyRAPL._sensor
    return sensor


def open_pyrapl(period: float = 0.01, sensor: Any = None) -> PyRaplMeter:
    """Open pyRAPL's package and DRAM counters.

    Args:
        period: seconds between polls of pyRAPL by the daemon thread.
        sensor: a pyRAPL ``Sensor`` (anything with ``energy()`` returning
            pyRAPL's list: package, dram per socket, in uJ, -1 where absent);
            default: the one ``pyRAPL.setup()`` made, else a new one.

    Raises:
        MeterUnavailable: pyRAPL is not installed or cannot read here.
    """
    period = _checks.number("period", period, "seconds", lo=0.0, hi=10.0, lo_open=True)
    if sensor is None:
        sensor = _make_sensor()
    try:
        first = [float(v) for v in sensor.energy()]
    except Exception as exc:
        raise MeterUnavailable(
            f"pyrapl meter: pyRAPL's Sensor.energy() failed: {type(exc).__name__}: {exc}"
        ) from None
    sockets = sorted({pos // 2 for pos, v in enumerate(first) if v >= 0})
    positions = [pos for pos, v in enumerate(first) if v >= 0 and pos // 2 in sockets]
    if not positions:
        raise MeterUnavailable("pyrapl meter: pyRAPL reports no package or DRAM counter")
    names = [f"{_DEVICES[pos % 2]}-{sockets.index(pos // 2)}" for pos in positions]
    domains, dropped = keep_domains("pyrapl", names)
    positions = [pos for pos, name in zip(positions, names, strict=True) if name in domains]
    source = new_handle(lib.nrg_push_new, len(domains), what="pyrapl meter: creating the source")
    poller = _Poller(
        source, sensor, positions, _moduli(sensor), [first[p] for p in positions], period
    )
    poller.push()  # time zero: 0 J everywhere
    meter = PyRaplMeter(
        source,
        kind="pyrapl",
        measured=True,
        domains=domains,
        resolution_s=period,
        default_period=period,
        description=(
            f"measured: RAPL through pyRAPL, polled every {period * 1000:g} ms by a Python thread"
        ),
        skipped=[f"{d}: more domains than nrgloops holds" for d in dropped],
    )
    thread = threading.Thread(target=poller.run, name="nrgloops-pyrapl", daemon=True)
    meter._poller = poller
    meter._thread = thread
    weakref.finalize(meter, poller.stop.set)  # collected meter: the thread ends
    thread.start()
    return meter
