"""What the cgroup governor leaves on this machine, for tests that check it left nothing."""

from __future__ import annotations

import os

from nrgloops.governors import CgroupGovernor, GovernorUnavailable

__all__ = ["nrgloops_cgroups"]


def nrgloops_cgroups() -> set[str]:
    """Names of the nrgloops-* groups under the CPU controller (empty where there is none)."""
    try:
        _, parent = CgroupGovernor().where()
    except GovernorUnavailable:
        return set()
    return {p for p in os.listdir(parent) if p.startswith("nrgloops-")}
