"""``restore``: undo what runs that died left changed, from their journals.

What a journal says is checked before anything is done with it, because a
journal is a file that says "write this there" and "kill what is in that
cgroup": the directory must be this user's own (``trusted_dir``), each file a
regular file of this user's, each entry of the right shape, naming a file of
the kind a governor writes, under the powercap or cgroup trees the governors
write, each value one the file can have held (``_limits``).  A bad file or
entry is skipped with a message naming it; everything else is still restored.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nrgloops import _checks
from nrgloops._errors import NrgError
from nrgloops.governors import _cgroupfs, _files
from nrgloops.governors._base import GovernorUnavailable
from nrgloops.governors._journal import (
    JournalUntrusted,
    alive,
    journal_dir,
    journal_files,
    read_journal,
    trusted_dir,
    write_journal,
)
from nrgloops.governors._limits import LIMIT_FILE, restorable_problem
from nrgloops.governors._signals import signals_deferred

__all__ = ["POWERCAP_TREES", "RestoreResult", "governed_trees", "restore"]

# Where the powercap class lives and where its zone links point.
POWERCAP_TREES = ("/sys/class/powercap", "/sys/devices/virtual/powercap")


@dataclass
class RestoreResult:
    """What ``restore`` did, one line each: changes undone; runs left alone
    (still alive); errors (a change that could not be undone, or a journal
    left because its run cannot be told from a later process with its pid);
    and ``bad``: journals or entries skipped because they are not what a
    governor writes (a value the file cannot have held among them)."""

    undone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


def governed_trees() -> list[Path]:
    """The trees the governors write here: powercap's and each mounted cgroup tree."""
    trees = [Path(p) for p in POWERCAP_TREES]
    with contextlib.suppress(GovernorUnavailable):  # no cgroup tree: none to write
        trees += [where for _, where, _ in _cgroupfs.cgroup_mounts()]
    return trees


def _under(path: str, trees: Iterable[Path]) -> bool:
    real = os.path.realpath(path)
    for tree in trees:
        top = os.path.realpath(tree)
        if real != top and os.path.commonpath([real, top]) == top:
            return True
    return False


def _entry_problem(entry: Any, pid: int, trees: Sequence[Path]) -> str | None:
    """Why ``entry`` is not one a governor writes, or None if it is."""
    if not isinstance(entry, dict):
        return f"not an object but {type(entry).__name__}"
    op, path = entry.get("op"), entry.get("path")
    if op not in ("write", "subtree", "cgroup"):
        return f"unknown op {op!r}"
    if not isinstance(path, str) or not path or "\0" in path:
        return f"path is not a path: {path!r}"
    name = os.path.basename(path)
    # Only powercap files are ever written back: the cgroup governor's quota
    # files (cpu.max, cpu.cfs_quota_us) live in the run's own cgroup, which is
    # removed, never rewritten, so a journal naming one is not a governor's.
    if op == "write" and not LIMIT_FILE.match(name):
        return f"{path} is not a powercap limit or enabled file"
    if op == "subtree" and name != "cgroup.subtree_control":
        return f"{path} is not a cgroup.subtree_control file"
    if op == "cgroup" and not re.fullmatch(rf"nrgloops-{pid}-\d+", name):
        return f"{path} is not a cgroup run {pid} would create (nrgloops-{pid}-N)"
    if not _under(path, trees):
        shown = ", ".join(str(t) for t in trees)
        return f"{path} is outside the trees the governors write ({shown})"
    if op == "write":  # under a governed tree: its zone's max may be read
        return restorable_problem(os.path.realpath(path), entry.get("old"))
    return None


def _undo(entry: dict[str, Any], force: bool) -> str:
    """Undo one checked entry; returns what was done, raises OSError or NrgError."""
    op, path = entry["op"], entry["path"]
    if op == "cgroup":
        if not os.path.isdir(path):
            return f"cgroup {path} was already gone"
        _cgroupfs.remove_cgroup(Path(path))
        return f"removed cgroup {path} (after stopping the processes left in it)"
    # A write or the cpu controller: only while no live run owns the file (it
    # may hold it now, having inherited this very original value).
    fd = _files.try_own(path, shared=False)
    if fd is None and not force:
        raise NrgError(
            f"held by a live governed run now (process {_files.lock_holders(path) or '?'}); "
            "it puts the original value back itself: left for a later restore"
        )
    try:
        if op == "write":
            _files.write_text(path, str(entry["old"]))
            return f"restored {path} to {entry['old']!r}"
        _files.write_text(path, "-cpu")
        return f"disabled the cpu controller again in {path}"
    finally:
        if fd is not None:
            os.close(fd)


def _doc_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"not a journal: a {type(doc).__name__}, not an object"
    if not isinstance(doc.get("changes"), list):
        return "not a journal: no list of changes"
    try:
        _checks.count("pid", doc.get("pid"), lo=1)
    except (TypeError, ValueError) as exc:
        return f"not a journal: {exc}"
    if doc.get("started") is not None and not isinstance(doc.get("started"), str):
        return "not a journal: started is not a str"
    return None


def restore(
    directory: str | os.PathLike[str] | None = None,
    force: bool = False,
    trees: Sequence[str | os.PathLike[str]] | None = None,
) -> RestoreResult:
    """Undo the changes left by runs that died without restoring them.

    Journals of runs still alive are skipped (they restore themselves)
    unless ``force``.  The most recent run's journal is undone first, so
    that the oldest one's original value comes back last.  A journal whose
    changes were all undone is removed; one with failures or bad entries
    keeps them.  ``trees``: the directories under which a journal may name a
    file (default ``governed_trees()``; a test's fake tree).
    """
    out = RestoreResult()
    force = _checks.boolean("force", force)
    where = Path(_checks.path("directory", directory)) if directory is not None else journal_dir()
    allowed = governed_trees() if trees is None else [Path(_checks.path("trees", t)) for t in trees]
    try:
        if not trusted_dir(where, create=False):
            return out
    except JournalUntrusted as exc:
        out.bad.append(f"{exc}; nothing in it was read")
        return out
    for path in journal_files(where):
        try:
            doc = read_journal(path)
        except (OSError, ValueError, JournalUntrusted) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            out.bad.append(f"{path}: skipped, not a journal this run can trust ({why})")
            continue
        problem = _doc_problem(doc)
        if problem is not None:
            out.bad.append(f"{path}: skipped, {problem}")
            continue
        pid, started = int(doc["pid"]), doc.get("started")
        if pid != os.getpid() and alive(pid, started) and not force:
            if started is None:
                # Without a start time a live pid proves nothing: it may be a
                # later process given the pid of a run that died.  Left, but
                # counted: this journal is not undone on any run without --force.
                out.errors.append(
                    f"{path}: left alone: process {pid} exists, but the journal has no start "
                    f"time to tell whether it is the run that wrote it or a later process "
                    f"given its pid; if `ps -o pid,args -p {pid}` shows no governed nrgloops "
                    "run, undo it with `nrgloops governor restore --force` (which also "
                    "undoes the journals of runs still alive)"
                )
            else:
                out.skipped.append(
                    f"{path}: run {pid} is still alive and restores its own changes "
                    "(--force to undo them anyway)"
                )
            continue
        # Signals held per journal: a Ctrl-C cannot leave one half undone
        # with its file still listing what was undone.
        with signals_deferred():
            left: list[Any] = []
            for i, entry in reversed(list(enumerate(doc["changes"]))):  # latest first
                problem = _entry_problem(entry, pid, allowed)
                if problem is not None:
                    out.bad.append(f"{path}: entry {i} skipped: {problem}")
                    left.insert(0, entry)
                    continue
                try:
                    out.undone.append(_undo(entry, force))
                except (OSError, NrgError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    out.errors.append(f"{entry['path']}: {why}")
                    left.insert(0, entry)
            _rewrite(path, doc, left, out)
    return out


def _rewrite(path: Path, doc: dict[str, Any], left: list[Any], out: RestoreResult) -> None:
    """Keep in the journal what is left, or remove it."""
    try:
        if left:
            write_journal(path, {**doc, "changes": left})
        else:
            path.unlink()
    except OSError as exc:
        out.errors.append(
            f"{path}: could not be updated ({exc.strerror or exc}): it is stale, still "
            "listing changes undone above, which a later restore would undo again "
            "(writing the same original values)"
        )
