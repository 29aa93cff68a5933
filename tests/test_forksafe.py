"""Every lock of the package is usable in a forked child, whoever held it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from nrgloops import PowerCap, _forksafe, constraints, loops, nrg_adapt, perforate
from nrgloops.testing import FakeMeter


@contextmanager
def _held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by a thread that will not exist in a forked child."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            done.wait()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    holding.wait()
    try:
        yield
    finally:
        done.set()
        t.join()


def _in_child(check: Callable[[], object]) -> None:
    """Run ``check`` in a forked child; fail if it raises or hangs."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            check()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the child's check failed"
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child hung on a lock copied held by fork()")


@pytest.mark.parametrize("make", [_forksafe.lock, _forksafe.rlock])
def test_a_lock_held_at_fork_is_free_in_the_child(make: Callable[[], Any]) -> None:
    lock = make()
    with _held_by_another_thread(lock):
        _in_child(lambda: lock.acquire(timeout=5) or os._exit(2))
    assert lock.acquire(timeout=1)  # the parent's is its own: released by its owner


def test_shared_meter_lookup_after_fork() -> None:
    """Another thread inside constraints.shared_meter("...") at fork time."""
    with _held_by_another_thread(constraints._shared_lock):
        _in_child(lambda: constraints.shared_meter("model"))


def test_running_loops_after_fork() -> None:
    with _held_by_another_thread(loops._running_lock):
        _in_child(loops.running_loops)


def test_a_loop_is_usable_after_fork() -> None:
    m = FakeMeter(watts=1.0)
    with nrg_adapt(PowerCap(5, meter=m)) as loop:
        loop.step()
        with _held_by_another_thread(loop._lock):  # another thread ticking it
            _in_child(lambda: loop.report)
    items = perforate(range(3), PowerCap(5, meter=m))
    with _held_by_another_thread(items._lock):
        _in_child(lambda: list(items))


def test_every_lock_of_the_package_is_fork_safe() -> None:
    """No module makes its own threading lock: they would hang a child."""
    import pathlib

    root = pathlib.Path(_forksafe.__file__).parent
    found = [
        f"{p.relative_to(root)}:{n}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "_forksafe.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "threading.Lock(" in line or "threading.RLock(" in line
    ]
    assert not found, f"locks not from nrgloops._forksafe: {found}"
