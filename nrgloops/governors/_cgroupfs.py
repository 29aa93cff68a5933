"""The cgroup filesystem: where the cpu controller is, and removing a group.

Its own module because both the cgroup governor and ``restore`` need it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from nrgloops.governors import _files
from nrgloops.governors._base import GovernorUnavailable

__all__ = ["cgroup_mounts", "empty_cgroup", "find_cgroup", "remove_cgroup"]


def cgroup_mounts(mounts: str = "/proc/self/mounts") -> list[tuple[str, Path, list[str]]]:
    """(fstype "cgroup" or "cgroup2", mount point, options) of each cgroup mount."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError as exc:
        raise GovernorUnavailable(f"cgroup governor: cannot read {mounts}: {exc.strerror}") from exc
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[2], Path(parts[1]), parts[3].split(",")))
    return out


def find_cgroup(mounts: str = "/proc/self/mounts") -> tuple[int, Path]:
    """(version, directory under which to create groups) of the cpu controller."""
    v1: Path | None = None
    v2: list[Path] = []
    for fstype, where, options in cgroup_mounts(mounts):
        if fstype == "cgroup2":
            v2.append(where)
        elif "cpu" in options and v1 is None:
            v1 = where
    for root in v2:
        try:
            if "cpu" in _files.read_text(root / "cgroup.controllers").split():
                return 2, root
        except OSError:
            continue
    if v1 is not None:
        return 1, v1
    raise GovernorUnavailable(
        "cgroup governor: no cgroup hierarchy with the cpu controller is mounted "
        "(v2 with `cpu` in cgroup.controllers, or v1 `-o cpu`); mount one, e.g. "
        "`mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu`"
    )


def empty_cgroup(path: str, timeout: float = 5.0) -> None:
    """Kill every process left in a cgroup we created and wait for it to empty."""
    procs = os.path.join(path, "cgroup.procs")
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = [int(p) for p in _files.read_text(procs).split()]
        except FileNotFoundError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"processes {pids} stay in {path}")
        time.sleep(0.02)


def _rmdir_retry(path: Path) -> None:
    # An emptied cgroup can stay busy for a moment while the kernel lets go.
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    os.rmdir(path)


def remove_cgroup(group: Path) -> None:
    """Stop what is left in ``group`` and remove it."""
    empty_cgroup(str(group))
    _rmdir_retry(group)
