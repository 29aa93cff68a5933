"""Counting a pattern in a big buffer with N Python threads, GIL-free.

The C kernel (``nrg_search_count``) counts every occurrence that *starts* in a
range of positions, overlapping ones included.  Counts by start position add
up over any split of the positions, so ``threads`` workers each take a slice
of the start positions (reading past its end as far as the pattern needs) and
the sum is exact: a match across a slice border is counted once, by the slice
holding its first byte.

Note that ``bytes.count`` counts *non-overlapping* occurrences (``b"aaaa"
.count(b"aa") == 2``, we say 3); the two agree whenever the pattern cannot
overlap itself.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from nrgloops import _checks, _forksafe
from nrgloops._ffi import ffi, lib
from nrgloops._machine import cpu_count

__all__ = ["Searcher", "count", "count_overlapping_reference", "cpu_count"]


def _pattern(pattern: Any) -> bytes:
    if isinstance(pattern, str):
        return pattern.encode()
    if isinstance(pattern, (bytes, bytearray, memoryview)):
        return bytes(pattern)
    raise TypeError(f"pattern must be bytes or str, not {type(pattern).__name__}")


def count(
    haystack: bytes | bytearray | memoryview,
    pattern: bytes | str,
    start: int = 0,
    end: int | None = None,
) -> int:
    """Occurrences of ``pattern`` starting in ``[start, end)`` of ``haystack``
    (overlapping ones too), on the calling thread, GIL released."""
    pat = _pattern(pattern)
    n = len(haystack) if not isinstance(haystack, memoryview) else haystack.nbytes
    _checks.count("start", start, what="a start position")
    stop = n if end is None else _checks.count("end", end, lo=start, what="an end (>= start)")
    hay = ffi.from_buffer("uint8_t[]", haystack)
    return int(lib.nrg_search_count(hay, n, pat, len(pat), start, stop))


def count_overlapping_reference(haystack: bytes, pattern: bytes) -> int:
    """A slow, obviously correct count of overlapping occurrences (tests)."""
    if not pattern:
        return 0
    total, i = 0, haystack.find(pattern)
    while i >= 0:
        total += 1
        i = haystack.find(pattern, i + 1)
    return total


class Searcher:
    """Counts patterns in one buffer with a pool of worker threads.

    >>> with Searcher(corpus, max_threads=4) as s:
    ...     s.count(b"needle", threads=3)

    Each call splits the start positions into ``threads`` equal slices, one
    per worker; the C calls run in parallel because cffi releases the GIL.
    ``threads=1`` runs on the calling thread (no hand-off cost).
    """

    def __init__(
        self, haystack: bytes | bytearray | memoryview, max_threads: int | None = None
    ) -> None:
        self.max_threads = (
            cpu_count() if max_threads is None else _checks.count("max_threads", max_threads, lo=1)
        )
        self._keep = haystack  # the C pointer borrows this buffer's memory
        self._hay = ffi.from_buffer("uint8_t[]", haystack)
        self.size = len(self._hay)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = _forksafe.lock()

    def _executor(self) -> ThreadPoolExecutor:
        # The lock only guards making the pool, not every call: a Ctrl-C that
        # lands between a lock's acquire and its `with` block leaves it held
        # (a CPython limit), and close() in the cleanup must never wait on it.
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=self.max_threads, thread_name_prefix="nrg-search"
                    )
                pool = self._pool
        return pool

    def _range(self, pat: bytes, lo: int, hi: int) -> int:
        return int(lib.nrg_search_count(self._hay, self.size, pat, len(pat), lo, hi))

    def count(self, pattern: bytes | str, threads: int = 1) -> int:
        """Occurrences of ``pattern`` in the whole buffer (overlapping ones
        too), searched by ``threads`` threads (clamped to ``max_threads``)."""
        pat = _pattern(pattern)
        k = min(_checks.count("threads", threads, lo=1), self.max_threads)
        positions = self.size - len(pat) + 1
        if not pat or positions <= 0:
            return 0
        if k == 1:
            return self._range(pat, 0, positions)
        bounds = [positions * j // k for j in range(k + 1)]
        pool = self._executor()
        # The caller's thread takes the first slice itself: one hand-off fewer.
        futures: list[Future[int]] = [
            pool.submit(self._range, pat, bounds[j], bounds[j + 1]) for j in range(1, k)
        ]
        total = self._range(pat, bounds[0], bounds[1])
        return total + sum(f.result() for f in futures)

    def close(self) -> None:
        # no lock (see _executor): taking the pool is one swap under the GIL,
        # and shutting a pool down twice is harmless
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Searcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
