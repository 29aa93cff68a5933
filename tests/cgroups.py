"""What the cgroup governor leaves on this machine, for tests that check it left nothing."""

from __future__ import annotations

import os
import re

from nrgloops.governors import CgroupGovernor, GovernorUnavailable

__all__ = ["nrgloops_cgroups"]


def nrgloops_cgroups(*pids: int) -> set[str]:
    """Names of the nrgloops-<pid>-N groups under the CPU controller made by
    ``pids`` (default: this process), empty where there is none.

    Only those pids': other programs on the machine (a second test run)
    make and remove groups of their own at any time.
    """
    try:
        _, parent = CgroupGovernor().where()
    except GovernorUnavailable:
        return set()
    owners = {str(p) for p in pids or (os.getpid(),)}
    found = set()
    for name in os.listdir(parent):
        m = re.fullmatch(r"nrgloops-(\d+)-\d+", name)
        if m and m.group(1) in owners:
            found.add(name)
    return found
