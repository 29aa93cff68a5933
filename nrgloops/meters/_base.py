"""What every meter is: a C energy source plus what a user needs to know of it."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

from nrgloops import _forksafe
from nrgloops._errors import MeterUnavailable, NrgError
from nrgloops._ffi import ffi, lib, raise_errno

__all__ = ["Meter", "Reading", "default_total", "keep_domains"]

log = logging.getLogger("nrgloops")

# When a machine has more domains than the C core holds, keep these first;
# packages are never dropped (the total is their sum).
_PRIORITY = ("package", "psys", "dram", "core", "uncore")


class Reading(NamedTuple):
    """One reading: ``time`` in seconds (monotonic clock), ``joules`` cumulative per domain."""

    time: float
    joules: Mapping[str, float]


def default_total(domains: Sequence[str]) -> tuple[str, ...]:
    """The domains whose sum is the meter's total, never overlapping ones.

    Packages contain their cores and uncore, and psys contains the packages,
    so the total is the packages where there are any, else psys, else all
    (GPUs, a model's single domain).
    """
    packages = tuple(d for d in domains if d.startswith("package-"))
    if packages:
        return packages
    if "psys" in domains:
        return ("psys",)
    return tuple(domains)


def keep_domains(kind: str, domains: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: at most NRG_MAX_DOMAINS domains, in their order.

    Packages are always kept (dropping one would take it out of the total),
    then psys, DRAM, cores, uncore, anything else; a dropped domain is logged
    and returned so that the meter can list it in ``skipped``.

    Raises:
        MeterUnavailable: more packages than the C core holds.
    """
    limit = int(lib.NRG_MAX_DOMAINS)
    names = list(domains)
    if len(names) <= limit:
        return names, []

    def rank(d: str) -> tuple[int, int]:
        k = d.split("-", 1)[0]
        return (_PRIORITY.index(k) if k in _PRIORITY else len(_PRIORITY), names.index(d))

    ranked = sorted(names, key=rank)
    kept = set(ranked[:limit])
    dropped = [d for d in names if d not in kept]
    if any(d.startswith("package-") for d in dropped):
        raise MeterUnavailable(
            f"{kind} meter: {sum(d.startswith('package-') for d in names)} packages, more "
            f"than the {limit} domains nrgloops holds"
        )
    log.warning(
        "nrgloops: %s meter: keeping %d domains, dropping %s", kind, limit, ", ".join(dropped)
    )
    return [d for d in names if d in kept], dropped


class Meter:
    """An energy source the sampler can read.

    Attributes:
        kind: which source ("msr", "powercap", "perf", "model", "nvml", "pyrapl", "fake").
        measured: True for a hardware counter, False for an estimate.
        domains: names of the energy domains, e.g. ("package-0", "dram-0").
        total_domains: the domains summed for the total (no overlaps).
        resolution_s: how often the underlying counter moves, in seconds.
        default_period: the sampler period used when none is given, in seconds.
        max_period: the slowest sampler period that still catches every
            counter wrap, in seconds (inf where the counter does not wrap).
        description: one line on where the numbers come from.
        skipped: what the meter could not use and left out, one
            ``"what: why"`` per item (an unreadable zone, a missing msr file);
            empty when it reads everything there is.
        fallback_reason: for a meter that ``open_meter("auto")`` fell back
            to, why each better source was refused; else None.
    """

    def __init__(
        self,
        source: Any,
        *,
        kind: str,
        measured: bool,
        domains: Sequence[str],
        total_domains: Sequence[str] | None = None,
        resolution_s: float,
        default_period: float,
        max_period: float = math.inf,
        description: str = "",
        skipped: Sequence[str] = (),
    ) -> None:
        if len(domains) != lib.nrg_source_domains(source):
            raise NrgError(f"{kind} meter: {len(domains)} names for the source's domains")
        self._source = source
        self.kind = kind
        self.measured = measured
        self.domains = tuple(domains)
        self.total_domains = tuple(total_domains or default_total(self.domains))
        self.resolution_s = resolution_s
        self.default_period = default_period
        self.max_period = max_period
        self.description = description
        self.skipped = tuple(skipped)
        self.fallback_reason: str | None = None
        self._buf = ffi.new("double[]", len(self.domains))
        self._t = ffi.new("double *")
        # the buffers above are shared (unlocked again in a forked child)
        self._read_lock = _forksafe.lock()

    @property
    def label(self) -> str:
        """ "measured", "estimated" or "simulated" (a fake meter, whatever its
        ``measured`` says): say it next to every number."""
        if self.kind == "fake":
            return "simulated"
        return "measured" if self.measured else "estimated"

    @property
    def total_mask(self) -> int:
        return sum(1 << self.domains.index(d) for d in self.total_domains)

    def domain_index(self, domain: str | None) -> int:
        """The C column of a domain; -1 for the total (``None``)."""
        if domain is None:
            return -1
        if not isinstance(domain, str):
            raise TypeError(f"domain must be a str or None, not {type(domain).__name__}")
        try:
            return self.domains.index(domain)
        except ValueError:
            raise ValueError(
                f"unknown domain {domain!r} for the {self.kind} meter; it has {self.domains}"
            ) from None

    def read(self) -> Reading:
        """Read every domain now: cumulative joules since the meter was opened.

        Without a running sampler, two reads further apart than ``max_period``
        may miss a counter wrap; the sampler reads often enough.
        """
        with self._read_lock:
            rc = lib.nrg_source_read(self._source, self._t, self._buf)
            if rc < 0:
                self._read_failed(rc)
            t = self._t[0]
            joules = ffi.unpack(self._buf, len(self.domains))  # one call, not one per item
        return Reading(t, dict(zip(self.domains, joules, strict=True)))

    def _read_failed(self, rc: int) -> NoReturn:
        """Raise for a failed read (a meter with more to say overrides this)."""
        raise_errno(rc, f"reading the {self.kind} meter")

    @property
    def errors(self) -> int:
        """How many reads have failed since the meter was opened."""
        return int(lib.nrg_source_errors(self._source))

    @property
    def resets(self) -> int:
        """Counter resets seen since the meter was opened (resume from suspend,
        a driver reload): a step larger than the physical bound is no wrap, so
        it is not booked; each one loses the energy of one read interval."""
        return int(lib.nrg_source_resets(self._source))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.label} domains={self.domains}>"
