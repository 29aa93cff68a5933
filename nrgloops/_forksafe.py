"""Locks that a forked child can use: every lock of the package comes from here.

``fork()`` copies only the thread that calls it, but every lock as it is: a
lock another thread held at that moment stays held in the child, by a
thread that does not exist there, and the child's first ``with lock:``
hangs for ever.  ``lock()`` and ``rlock()`` make ordinary threading locks and
keep a weak reference to each; after a fork, in the child, each one still
alive is made unlocked again (before any other at-fork hook of the package
runs: this module is imported first, and hooks run in the order registered).

This is right because no lock of the package is held across user code: the
thread that forks is never inside one of our critical sections, so a held
lock in the child is always one whose owner is gone.  (The C locks have
their own ``pthread_atfork`` handlers in the C core.)
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["lock", "rlock"]

# WeakSet: a lock goes away with its owner (a loop, a meter) as usual.
_locks: weakref.WeakSet[Any] = weakref.WeakSet()


def lock() -> threading.Lock:
    """A ``threading.Lock`` that is unlocked again in a forked child."""
    made = threading.Lock()
    _locks.add(made)
    return made


def rlock() -> threading.RLock:
    """A ``threading.RLock`` that is unlocked again in a forked child."""
    made = threading.RLock()
    _locks.add(made)
    return made


def _reinit_in_child() -> None:
    # _at_fork_reinit is what the threading module uses for its own locks
    # (Python >= 3.9): unlocked, owner and count cleared, whoever held it.
    for held in list(_locks):
        held._at_fork_reinit()


os.register_at_fork(after_in_child=_reinit_in_child)
