"""Signals around a change to the system: turned into exceptions, or held.

``signals_raise`` makes SIGTERM and SIGHUP raise ``Terminated`` so that the
``finally`` blocks that restore a change run; ``signals_deferred`` holds
SIGINT/SIGTERM/SIGHUP across a change and its bookkeeping (or a restore) so
that a signal cannot cut either in half.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Terminated", "signals_deferred", "signals_raise"]


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP while a governor (or
    the CLI) holds a change, so that ``finally`` blocks restore it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _set_handlers(pairs: list[tuple[int, Any]]) -> None:
    """Install each (signal, handler); each in a ``finally`` of the one
    before, so that a handler raising as soon as it is back (a Ctrl-C
    arriving now) cannot leave the others unrestored."""
    if not pairs:
        return
    sig, handler = pairs[0]
    try:
        signal.signal(sig, handler)
    finally:
        _set_handlers(pairs[1:])


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise ``Terminated`` in the main thread
    (SIGINT already raises KeyboardInterrupt), so cleanup code runs.

    A handler that is already installed (not the default action) is left
    alone; outside the main thread nothing is installed (the journal is the
    fallback there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: list[tuple[int, Any]] = []
    try:
        sig: int
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                saved.append((sig, signal.signal(sig, _raise_terminated)))
        yield
    finally:
        _set_handlers(saved)


_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Handlers whose only effect is an exception in the main thread: redundant
# while the main thread is already unwinding with one.
_RAISING: tuple[Any, ...] = (signal.default_int_handler, _raise_terminated)


class signals_deferred:  # a context manager, named like the function it is used as
    """Hold SIGINT/SIGTERM/SIGHUP across a change and its bookkeeping, or
    across a restore, so that a signal (a second Ctrl-C) cannot cut either
    in half; they are delivered again when the block ends.

    Masking the signals (``pthread_sigmask``) is not enough: the mask is per
    thread, and the kernel then hands a process-directed signal to another
    thread (a worker, a C thread), after which CPython runs the Python
    handler in the main thread anyway, mid-block.  So for the block's length
    the Python handlers are swapped for ones that only record the signal; the
    old ones come back and the recorded signals are raised again after it.
    If the block itself raises, a recorded signal whose handler would only
    raise too (KeyboardInterrupt, ``Terminated``) is dropped: the main thread
    is already unwinding, and replacing the exception would hide it (a
    failed restore).  Signals set to be ignored, or whose handler was not
    installed from Python, are left as they are.  Nested blocks are one
    block; outside the main thread (where Python handlers never run) it does
    nothing.
    """

    _depth = 0  # touched by the main thread only

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []
        self._pending: list[int] = []
        self._active = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._pending:  # pending signals coalesce, as in the kernel
            self._pending.append(signum)

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        cls = type(self)
        cls._depth += 1
        self._active = True
        if cls._depth > 1:
            return  # the outer block holds them
        try:
            for sig in _DEFERRED:
                old = signal.getsignal(sig)
                if old is None or old is signal.SIG_IGN:
                    continue
                # Saved before it is swapped: a signal between the two runs the
                # old handler, before the block has begun.
                self._saved.append((sig, old))
                signal.signal(sig, self._record)
        except BaseException as exc:
            # A signal raised before all were swapped: put back those that were.
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if not self._active:
            return
        cls = type(self)
        cls._depth -= 1
        if cls._depth > 0:
            return
        saved, self._saved = self._saved, []
        try:
            _set_handlers(saved)
        finally:
            old = dict(saved)
            for sig in self._pending:
                if kind is not None and old.get(sig) in _RAISING:
                    continue
                signal.raise_signal(sig)  # runs the restored handler here
