"""The search kernel and the threaded Searcher: exact overlapping counts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nrgloops.bench.corpus import make_corpus, make_patterns
from nrgloops.bench.search import Searcher, count, count_overlapping_reference

# Small alphabets make matches (and self-overlapping patterns) frequent.
texts = st.binary(max_size=600) | st.text(alphabet="ab ", max_size=600).map(str.encode)
patterns = st.binary(min_size=1, max_size=12) | st.text(
    alphabet="ab ", min_size=1, max_size=12
).map(str.encode)


def slow_count(hay: bytes, pat: bytes, start: int, end: int) -> int:
    """Every start position in [start, end) where pat fits and matches."""
    return sum(1 for i in range(start, min(end, len(hay))) if hay.startswith(pat, i))


def test_overlapping_semantics() -> None:
    assert count(b"aaaa", b"aa") == 3
    assert b"aaaa".count(b"aa") == 2  # bytes.count does not overlap
    assert count(b"abababa", b"aba") == 3
    assert count(b"abc", b"abcd") == 0
    assert count(b"", b"a") == 0
    assert count(b"abc", b"") == 0
    assert count("héllo".encode(), "é") == 1


@settings(max_examples=400, deadline=None)
@given(texts, patterns)
def test_count_matches_reference(hay: bytes, pat: bytes) -> None:
    expect = count_overlapping_reference(hay, pat)
    assert count(hay, pat) == expect
    assert expect == len(re.findall(b"(?=" + re.escape(pat) + b")", hay))


@settings(max_examples=300, deadline=None)
@given(texts, patterns, st.integers(0, 700), st.integers(0, 700))
def test_count_in_range(hay: bytes, pat: bytes, start: int, end: int) -> None:
    if end < start:
        start, end = end, start
    assert count(hay, pat, start, end) == slow_count(hay, pat, start, end)


@settings(max_examples=200, deadline=None)
@given(texts, patterns, st.lists(st.integers(0, 700), max_size=6))
def test_ranges_add_up(hay: bytes, pat: bytes, cuts: list[int]) -> None:
    # Counting by start position decomposes over any split: what threads rely on.
    bounds = [0, *sorted(c for c in cuts if c <= len(hay)), len(hay)]
    parts = sum(count(hay, pat, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))
    assert parts == count(hay, pat)


@settings(max_examples=150, deadline=None)
@given(texts, patterns, st.integers(1, 5))
def test_searcher_threads_exact(hay: bytes, pat: bytes, threads: int) -> None:
    with Searcher(hay, max_threads=4) as s:
        assert s.count(pat, threads) == count_overlapping_reference(hay, pat)


def test_matches_across_slice_borders() -> None:
    # A match straddling every border of a 2-, 3- and 4-way split.
    hay = bytearray(b"." * 1200)
    pat = b"NEEDLE"
    for k in (2, 3, 4):
        positions = len(hay) - len(pat) + 1
        for j in range(1, k):
            border = positions * j // k
            for shift in range(1, len(pat)):
                at = border - shift
                hay[at : at + len(pat)] = pat
    expect = count_overlapping_reference(bytes(hay), pat)
    with Searcher(bytes(hay), max_threads=4) as s:
        for threads in (1, 2, 3, 4):
            assert s.count(pat, threads) == expect


def test_vector_block_edges() -> None:
    # Lengths around the 16/64-byte block sizes, matches at the very end.
    for n in range(1, 200):
        hay = b"x" * (n - 1) + b"y"
        for pat in (b"y", b"xy", b"xxy", b"x" * 17 + b"y"):
            assert count(hay, pat) == count_overlapping_reference(hay, pat)


def test_corpus_counts_agree_with_bytes_count() -> None:
    corpus = make_corpus(1 << 20, seed=3)
    with Searcher(corpus, max_threads=2) as s:
        for pat in make_patterns(corpus, 30, seed=3):
            assert s.count(pat, 2) == count_overlapping_reference(corpus, pat)
            if not any(pat[i:] == pat[: len(pat) - i] for i in range(1, len(pat))):
                assert s.count(pat, 1) == corpus.count(pat)  # cannot self-overlap


def test_corpus_deterministic() -> None:
    a = make_corpus(100_000, seed=7)
    assert a == make_corpus(100_000, seed=7)
    assert a != make_corpus(100_000, seed=8)
    assert len(a) == 100_000
    assert make_patterns(a, 10, seed=7) == make_patterns(a, 10, seed=7)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        count(b"abc", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start"):
        count(b"abc", b"a", 2, 1)
    with Searcher(b"abc") as s:
        with pytest.raises(ValueError, match="threads"):
            s.count(b"a", 0)
        with pytest.raises(TypeError, match="threads"):
            s.count(b"a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_threads"):
        Searcher(b"abc", max_threads=0)
    with pytest.raises(ValueError, match="size"):
        make_corpus(0)
    with pytest.raises(ValueError, match="count"):
        make_patterns(b"abc", 0)
