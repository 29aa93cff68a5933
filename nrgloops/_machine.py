"""Facts about this machine: usable CPUs, memory, CPU model, kernel, Python.

A core module: the governors size their CPU quota with ``cpu_count`` and the
benchmark describes its results with ``machine_info``; neither may import
the other, so the facts live here, below both.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["available_memory", "cpu_count", "cpu_model", "machine_info", "machine_line"]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of memory a new allocation can get without swapping (the kernel's
    ``MemAvailable``), or None where it cannot be read."""
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "MemAvailable":
                    return int(value.split()[0]) * 1024  # the kernel says kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return None


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
