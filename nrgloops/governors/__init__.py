"""System-level power governors: the baselines an NRG-loop is compared with.

A governor caps a whole workload from outside, without knowing what it does:
``PowercapGovernor`` (``powercap.py``) sets the RAPL PL1 limit of every
package; ``CgroupGovernor`` (``cgroup.py``) moves a CPU quota by feedback.
``Governor.run(cap_w, workload, power)`` runs ``workload`` under the cap and
returns its ``Trace`` (the result, and the power and setting at each step).

Every change is explicit and reversible.  Before a governor changes anything
it writes what it is about to change to a journal file (``_journal.py``), and
it undoes the change -- and removes the journal entry -- on success, on an
exception, on Ctrl-C (SIGINT) and on SIGTERM/SIGHUP (``_signals.py``).  One
run at a time owns a limit (a ``flock`` on the file, ``_files.py``); a run
that finds a journal of a dead run for its limit puts back that journal's
original value.  If a process is killed outright (SIGKILL, power loss),
``nrgloops governor restore`` (``_restore.py``) reads the journals of runs
that are gone and undoes what they left, after checking that each names only
files the governors write.

Journal files (one per run, ``<pid>-<ns>.json``) live in, in this order:
``$NRGLOOPS_JOURNAL_DIR``; ``/run/nrgloops`` when running as root;
``$XDG_RUNTIME_DIR/nrgloops``; ``/tmp/nrgloops-<uid>`` -- and only if that
directory is this user's own, mode 0700 and not a symlink.
"""

from __future__ import annotations

import os
from typing import Any

from nrgloops import _checks
from nrgloops.governors._base import Governor, GovernorBusy, GovernorUnavailable, Trace
from nrgloops.governors._journal import Journal, JournalUntrusted, journal_dir, trusted_dir
from nrgloops.governors._restore import RestoreResult, governed_trees, restore
from nrgloops.governors._signals import Terminated, signals_raise
from nrgloops.governors.cgroup import CgroupGovernor
from nrgloops.governors.powercap import PowercapGovernor, Zone

__all__ = [
    "GOVERNORS",
    "CgroupGovernor",
    "Governor",
    "GovernorBusy",
    "GovernorUnavailable",
    "Journal",
    "JournalUntrusted",
    "PowercapGovernor",
    "RestoreResult",
    "Terminated",
    "Trace",
    "Zone",
    "governed_trees",
    "journal_dir",
    "open_governor",
    "probe_governors",
    "restore",
    "signals_raise",
    "trusted_dir",
]

GOVERNORS = ("auto", "powercap", "cgroup", "none")


def probe_governors(powercap_root: str = "/sys/class/powercap") -> dict[str, str | None]:
    """Each governor -> None when usable here, else why not and how to fix it."""
    out: dict[str, str | None] = {}
    for gov in (PowercapGovernor(powercap_root), CgroupGovernor()):
        try:
            gov.check()
            out[gov.name] = None
        except GovernorUnavailable as exc:
            out[gov.name] = str(exc)
        except OSError as exc:
            out[gov.name] = f"{gov.name} governor: {exc}"
    return out


def open_governor(
    kind: str = "auto",
    powercap_root: str | os.PathLike[str] = "/sys/class/powercap",
    journal: str | os.PathLike[str] | None = None,
    **cgroup_options: Any,
) -> tuple[Governor | None, str]:
    """The governor to use and a line saying which and why.

    ``"auto"`` picks powercap where it can write the limits, else cgroup, else
    none (returns None and the reasons).  An explicit kind that cannot run
    here raises GovernorUnavailable; ``"none"`` returns None.
    ``cgroup_options`` go to CgroupGovernor (e.g. ``control_period``).
    """
    kind = _checks.choice("governor", kind, GOVERNORS)
    root = _checks.path("powercap_root", powercap_root)
    if kind == "none":
        return None, "no governor (--governor none)"
    if kind in ("powercap", "cgroup"):
        gov: Governor = (
            PowercapGovernor(root, journal=journal)
            if kind == "powercap"
            else CgroupGovernor(journal=journal, **cgroup_options)
        )
        gov.check()
        return gov, f"{kind}: {gov.description}"
    reasons = probe_governors(root)
    if reasons["powercap"] is None:
        gov = PowercapGovernor(root, journal=journal)
        return gov, f"powercap: {gov.description}"
    if reasons["cgroup"] is None:
        gov = CgroupGovernor(journal=journal, **cgroup_options)
        return gov, (f"cgroup: {gov.description} (powercap refused: {reasons['powercap']})")
    return None, "no governor can run here: " + "; ".join(str(r) for r in reasons.values())
