"""What machine a result came from: CPU model, cores, kernel, Python."""

from __future__ import annotations

import os
import platform
from typing import Any

from nrgloops.bench.search import cpu_count

__all__ = ["cpu_model", "machine_info", "machine_line"]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the best guess."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                names = ("model name", "Model", "cpu model", "Hardware")
                if sep and key.strip() in names and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _virtual(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on a virtual machine (the CPU flags name a hypervisor)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False


def machine_info() -> dict[str, Any]:
    """A small JSON-able description of this machine."""
    return {
        "cpu_model": cpu_model(),
        "virtual": _virtual(),
        "cores": cpu_count(),  # the CPUs this process may use
        "logical_cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for titles and logs: "AMD EPYC (virtual machine), 2 cores, Python 3.11.7"."""
    m = info or machine_info()
    vm = " (virtual machine)" if m.get("virtual") else ""
    return f"{m['cpu_model']}{vm}, {m['cores']} cores, Python {m['python']}"
