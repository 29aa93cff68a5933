"""The sysfs and cgroupfs files a governor changes: read, write, own.

One place for each, so that tests can inject a failure (a BIOS-locked limit)
by replacing ``write_text`` here.  ``owned`` takes a limit for one run: an
exclusive ``flock`` on the file itself, so that two runs -- in one process
or in two, with the same journal directory or not -- can never both record
the other's value as the one to put back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from nrgloops.governors._base import GovernorBusy

__all__ = ["lock_holders", "owned", "read_text", "try_own", "write_text"]


def read_text(path: str | os.PathLike[str]) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read().strip()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    # One write() of the value and a newline, as `echo value > file` does:
    # sysfs and cgroupfs parse it whole; O_TRUNC matters only for fake trees.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


def lock_holders(path: str | os.PathLike[str]) -> list[int]:
    """Pids holding a flock on ``path`` (from /proc/locks), for messages."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev:
            with contextlib.suppress(ValueError):
                pids.append(int(parts[4]))
    return pids


def try_own(path: str | os.PathLike[str], shared: bool = False) -> int | None:
    """An fd holding a flock on ``path`` (exclusive, or ``shared``), or None
    if another holder has it; OSError if the file cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


@contextlib.contextmanager
def owned(path: str | os.PathLike[str], what: str, shared: bool = False) -> Iterator[None]:
    """Own ``path`` while inside (see the module's docstring); GovernorBusy,
    naming the holder, if another run owns it.  A missing file is not owned
    (nothing to change there)."""
    try:
        fd = try_own(path, shared)
    except FileNotFoundError:
        yield
        return
    if fd is None:
        pids = lock_holders(path)
        who = (
            "this process"
            if pids and all(p == os.getpid() for p in pids)
            else f"process {', '.join(map(str, sorted(set(pids))))}"
            if pids
            else "another process"
        )
        raise GovernorBusy(
            f"{what}: {path} is held by another governed run ({who}); one run at a "
            "time may change it, so that each puts back the value that was there "
            "before both: wait for that run to end"
        )
    try:
        yield
    finally:
        os.close(fd)  # closing the last fd of the open file drops the flock
