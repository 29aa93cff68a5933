"""What a powercap limit file may hold: one place for the range, read by the
PL1 governor before it sets a cap and by ``restore`` before it puts a value
back from a journal.

The kernel masks a limit into the 15-bit PL1 field of MSR_PKG_POWER_LIMIT
without a range check, so a value too large for the field can become a tiny
limit (a 0 W PL1): nothing outside the zone's range is ever written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nrgloops.governors import _files

__all__ = [
    "FIELD_MAX_UW",
    "LIMIT_FILE",
    "MIN_ZONE_UW",
    "max_power_uw",
    "restorable_problem",
]

# The PL1 field: 15 bits of power units (1/8 W on every Intel CPU so far):
# the most any package limit can say, where the zone gives no max_power_uw.
FIELD_MAX_UW = (2**15 - 1) * 125_000
# Below 1 W a package limit is 0-7 power units: the firmware cannot hold it,
# and a cap rounded to 0 µW would be written as "no power at all".
MIN_ZONE_UW = 1_000_000
# The files of a zone a governor writes: a constraint's limit, the zone's switch.
LIMIT_FILE = re.compile(r"^(constraint_\d+_power_limit_uw|enabled)$")
_DECIMAL = re.compile(r"^\d{1,20}$")


def max_power_uw(limit: str | os.PathLike[str]) -> int:
    """The greatest value the limit file ``limit`` (``constraint_N_power_limit_uw``)
    takes, µW: its zone's ``constraint_N_max_power_uw``, at most the PL1 field's;
    the field's where the zone gives none (missing, unreadable, 0 or not a number)."""
    limit = Path(limit)
    beside = limit.with_name(limit.name.replace("_power_limit_uw", "_max_power_uw"))
    try:
        text = _files.read_text(beside)
    except OSError:
        return FIELD_MAX_UW
    given = int(text) if _DECIMAL.match(text) else 0
    return min(given, FIELD_MAX_UW) or FIELD_MAX_UW


def restorable_problem(path: str, old: object) -> str | None:
    """Why ``old`` may not be written back to the governed file ``path``, or None:
    ``enabled`` takes 0 or 1; a limit takes [0, ``FIELD_MAX_UW``] µW (0: some
    firmware leaves an unused constraint at 0).

    The bound is the PL1 field's, not the zone's ``max_power_uw`` (which bounds
    new caps): firmware may set a package's own limit above that, often to
    "unlimited", and restore must put back exactly what was there; only a value
    the field cannot hold (which the kernel would mask) is refused."""
    name = os.path.basename(path)
    if not LIMIT_FILE.match(name):
        return f"{path} is not a powercap limit or enabled file"
    if not isinstance(old, str) or not _DECIMAL.match(old):
        return f"old must be the decimal value the file held, got {old!r}"
    if name == "enabled":
        if old not in ("0", "1"):
            return f"old must be 0 or 1 for {path}, got {old!r}"
        return None
    if int(old) > FIELD_MAX_UW:
        return (
            f"old {old} µW for {path} is above the PL1 field's maximum ({FIELD_MAX_UW} µW): "
            "not a limit the file can have held (the kernel would mask it into the field, "
            "possibly a 0 W limit)"
        )
    return None
