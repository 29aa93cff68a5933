"""The journal: what a run is about to change, on disk before it changes it.

One file per run, ``<pid>-<ns>.json``, in a directory only this user can
write (see ``journal_dir``).  ``restore`` (its own module) reads the files
of runs that died and undoes what they list.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nrgloops import _forksafe
from nrgloops._errors import NrgError

__all__ = [
    "MAX_JOURNAL_BYTES",
    "Journal",
    "JournalUntrusted",
    "alive",
    "journal_dir",
    "journal_files",
    "read_journal",
    "real_path",
    "trusted_dir",
    "undo_held",
    "write_journal",
]

MAX_JOURNAL_BYTES = 1 << 20  # a run's journal lists a few changes: anything larger is not one
_NAME = re.compile(r"^(\d+)-(\d+)\.json$")


class JournalUntrusted(NrgError):
    """The journal directory (or a file in it) could have been made by someone else."""


def journal_dir() -> Path:
    """Where journal files go: ``$NRGLOOPS_JOURNAL_DIR``; ``/run/nrgloops`` as
    root; ``$XDG_RUNTIME_DIR/nrgloops``; else ``/tmp/nrgloops-<uid>``.

    Only where it is; ``trusted_dir`` says whether it may be used.
    """
    env = os.environ.get("NRGLOOPS_JOURNAL_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path("/run/nrgloops")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "nrgloops"
    return Path(f"/tmp/nrgloops-{os.getuid()}")


def trusted_dir(directory: Path, create: bool) -> bool:
    """Check that ``directory`` is this user's own: a real directory (not a
    symlink), owned by the effective uid, mode 0700 -- as ``ssh-agent`` does
    with its socket directory.  With ``create``, make it first (``mkdir``
    with mode 0700 is atomic: if someone else made it first, the owner check
    refuses it).  Returns False if it does not exist (and not ``create``);
    raises JournalUntrusted saying what is wrong, and what to do."""
    if create:
        if not directory.parent.is_dir():
            with contextlib.suppress(FileExistsError):
                directory.parent.mkdir(parents=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return False
    fix = (
        "remove it (it may have been made by someone else to plant journals) or set "
        "NRGLOOPS_JOURNAL_DIR to a directory of your own"
    )
    if stat.S_ISLNK(st.st_mode):
        raise JournalUntrusted(f"the journal directory {directory} is a symlink: {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise JournalUntrusted(f"the journal directory {directory} is not a directory: {fix}")
    if st.st_uid != os.geteuid():
        raise JournalUntrusted(
            f"the journal directory {directory} is owned by uid {st.st_uid}, not by you "
            f"(uid {os.geteuid()}): {fix}"
        )
    if st.st_mode & 0o077:
        raise JournalUntrusted(
            f"the journal directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}, "
            f"not 0700: others could plant journals in it; `chmod 700 {directory}` if it "
            "is yours, or set NRGLOOPS_JOURNAL_DIR"
        )
    return True


def journal_files(directory: Path) -> list[Path]:
    """The journal files in a trusted ``directory``, the most recent run first
    (so that when two runs changed one file, the oldest's value is put back
    last, and wins)."""

    def created(p: Path) -> int:
        m = _NAME.match(p.name)
        if m:
            return int(m.group(2))
        try:
            return os.lstat(p).st_mtime_ns
        except OSError:
            return 0

    return sorted(directory.glob("*.json"), key=created, reverse=True)


def read_journal(path: Path) -> Any:
    """The parsed JSON of a journal file: a regular file of this user's, not a
    symlink, at most MAX_JOURNAL_BYTES.  Raises JournalUntrusted or ValueError
    saying what is wrong with it (OSError if it cannot be read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise JournalUntrusted("not a regular file")
        if st.st_uid != os.geteuid():
            raise JournalUntrusted(f"owned by uid {st.st_uid}, not by you")
        if st.st_size > MAX_JOURNAL_BYTES:
            raise ValueError(f"{st.st_size} bytes: larger than any journal ({MAX_JOURNAL_BYTES})")
        data = f.read(MAX_JOURNAL_BYTES + 1)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply to be a journal") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None


def write_journal(path: Path, doc: dict[str, Any]) -> None:
    """Replace the journal file ``path`` by ``doc``, atomically and durably: a
    temporary file beside it (this user's only, never through a symlink),
    fsync'd, renamed over it, and the directory fsync'd so that the rename
    survives a power cut too.  A reader sees the old or the new list, never
    half of one.  Raises OSError."""
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a write that failed half way
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def real_path(path: str) -> str | None:
    """``path`` with every symlink resolved (one zone has several spellings:
    /sys/class/powercap/intel-rapl:0 is a link into /sys/devices), or None if
    it is not a path at all."""
    try:
        return os.path.realpath(path)
    except (ValueError, OSError):  # a NUL byte; a name too long
        return None


def _writes(entry: Any, real: str) -> bool:
    """Whether a journal entry records a write, with its old value, to the file
    whose real path is ``real`` (journals written before paths were stored
    resolved are resolved here)."""
    return (
        isinstance(entry, dict)
        and entry.get("op") == "write"
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("old"), str)
        and real_path(entry["path"]) == real
    )


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat):
    with the pid it names a process uniquely (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def alive(pid: int, started: str | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


class Journal:
    """The changes one run holds, written to disk before each change is made.

    An entry is a dict with ``op``: ``"write"`` (``path`` held ``old``
    before), ``"cgroup"`` (the run created the cgroup ``path``) or
    ``"subtree"`` (the run enabled the cpu controller in ``path``, a v2
    ``cgroup.subtree_control``).  The file exists only while entries do.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else journal_dir()
        self.created = time.time_ns()
        self.path = self.directory / f"{os.getpid()}-{self.created}.json"
        self._entries: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._lock = _forksafe.lock()  # a child forked mid-add must not inherit it held

    def add(self, entry: dict[str, Any]) -> int:
        """Record a change about to be made; returns its id for ``drop``."""
        if isinstance(entry.get("path"), str):
            # Stored resolved: a later run spelling the same file another way
            # still finds this entry (``inherited``), and ``restore`` writes it.
            entry = {**entry, "path": real_path(entry["path"]) or entry["path"]}
        with self._lock:
            key = self._next
            self._next += 1
            self._entries[key] = entry
            try:
                self._flush()
            except NrgError:
                del self._entries[key]  # not on disk: the change must not be made
                raise
            return key

    def drop(self, key: int) -> None:
        """The change was undone: forget it.

        Raises NrgError if the file cannot be written; the key is forgotten
        anyway (the file may then list a change already undone).
        """
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._flush()

    @property
    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries.values())

    def _others_listing(self, path: str) -> list[tuple[Path, dict[str, Any]]]:
        """The other journals here (oldest first) with a write to ``path``."""
        try:
            if not trusted_dir(self.directory, create=False):
                return []
        except JournalUntrusted:
            return []
        real = real_path(path)
        if real is None:
            return []
        out = []
        for other in reversed(journal_files(self.directory)):  # oldest first
            if other == self.path:
                continue
            try:
                doc = read_journal(other)
            except (OSError, ValueError, NrgError):
                continue  # `restore` reports it
            changes = doc.get("changes") if isinstance(doc, dict) else None
            if isinstance(changes, list) and any(_writes(e, real) for e in changes):
                out.append((other, doc))
        return out

    def inherited(self, path: str, accept: Callable[[str], bool] | None = None) -> str | None:
        """The value the oldest other journal here says ``path`` held before it
        was written (a run that died holding it, or that failed to put it
        back), or None.  A run that owns ``path`` now records that value as
        its "old": the original comes back whatever the order of the runs.
        ``accept``: which values the file can have held; a journal giving
        another (corrupt, or planted) is passed over."""
        real = real_path(path)
        if real is None:
            return None
        for _, doc in self._others_listing(real):
            for entry in doc["changes"]:
                if _writes(entry, real) and (accept is None or accept(entry["old"])):
                    return str(entry["old"])
        return None

    def retire_others(self, path: str) -> None:
        """Once this journal holds the inherited original of ``path``, drop the
        entries for it from the journals of runs that are gone, so that none
        is left listing a change this run now owns.  Best effort: an entry
        left behind only writes the same original again."""
        real = real_path(path)
        if real is None:
            return
        for other, doc in self._others_listing(real):
            pid = doc.get("pid")
            started = doc.get("started")
            if not isinstance(pid, int) or alive(
                pid, started if isinstance(started, str) else None
            ):
                continue  # a live run's own journal: its file, not ours to edit
            rest = [e for e in doc["changes"] if not _writes(e, real)]
            with contextlib.suppress(OSError):
                if rest:
                    write_journal(other, {**doc, "changes": rest})
                else:
                    other.unlink()

    def _flush(self) -> None:
        try:
            if not self._entries:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return
            trusted_dir(self.directory, create=True)
            doc = {
                "pid": os.getpid(),
                "started": start_time(os.getpid()),
                "created": self.created,
                "written": time.time(),
                "changes": list(self._entries.values()),
            }
            write_journal(self.path, doc)
        except JournalUntrusted as exc:
            raise NrgError(f"cannot write the governor journal {self.path}: {exc}") from exc
        except OSError as exc:
            raise NrgError(
                f"cannot write the governor journal {self.path}: {exc.strerror}; set "
                "NRGLOOPS_JOURNAL_DIR to a writable directory"
            ) from exc


def undo_held(
    what: str, steps: list[tuple[str, Callable[[], None], int]], journal: Journal
) -> None:
    """Undo every change a run holds, then forget the undone ones in the journal.

    ``steps`` are (what was restored, how, journal key), latest change first.
    Every step runs even when one before it failed; the journal is written
    only after all of them, so that a journal that cannot be written (a full
    disk) cannot leave a limit changed.  Raises NrgError saying what was
    restored, what was not, and whether the journal is stale.
    """
    done: list[tuple[str, int]] = []
    failed: list[str] = []
    for label, undo, key in steps:
        try:
            undo()
        except Exception as exc:  # every other step still runs
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            failed.append(f"{label}: {why}")
        else:
            done.append((label, key))
    stale: BaseException | None = None
    for _, key in done:
        try:
            journal.drop(key)
        except (OSError, NrgError) as exc:
            stale = exc
    if not failed and stale is None:
        return
    parts = []
    if failed:
        parts.append(
            "could not undo "
            + "; ".join(failed)
            + f" (the journal {journal.path} keeps what was not undone: run "
            "`nrgloops governor restore`)"
        )
    if done:
        parts.append("undone: " + ", ".join(label for label, _ in done))
    if stale is not None:
        parts.append(
            f"but the journal {journal.path} could not be updated ({stale}): it may be "
            "stale, still listing changes already undone, which `nrgloops governor "
            "restore` would undo again (writing the same original values)"
        )
    raise NrgError(f"{what}: " + "; ".join(parts))
