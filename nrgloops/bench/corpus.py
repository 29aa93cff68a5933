"""A deterministic text corpus and the strings to look for in it.

The corpus is text-like: words from a synthetic vocabulary (letters drawn
with English letter frequencies, lengths 1-12), chosen with a Zipf law,
separated by spaces, with a newline after about one word in 12.  The same seed and
size give the same bytes (numpy's PCG64 stream).
"""

from __future__ import annotations

from nrgloops import _checks
from nrgloops.bench import EXTRA_MISSING

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"numpy is missing: {EXTRA_MISSING}") from exc

__all__ = ["make_corpus", "make_patterns"]

# English letter frequencies, a-z (percent).
_LETTER_FREQ = np.array(
    [
        8.2,
        1.5,
        2.8,
        4.3,
        12.7,
        2.2,
        2.0,
        6.1,
        7.0,
        0.15,
        0.77,
        4.0,
        2.4,
        6.7,
        7.5,
        1.9,
        0.095,
        6.0,
        6.3,
        9.1,
        2.8,
        0.98,
        2.4,
        0.15,
        2.0,
        0.074,
    ]
)
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_VOCAB = 50_000
_MAX_LEN = 12
_CHUNK_WORDS = 1 << 18  # words per generation step: bounds temporary memory


def _vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The words as rows of a table (letters, then the separator, then
    padding) and each row's used length.  Rows 0..V-1 end in a space, rows
    V..2V-1 are the same words ending in a newline."""
    lengths = np.clip(rng.poisson(5.0, _VOCAB), 1, _MAX_LEN)
    letters = rng.choice(_LETTERS, size=(_VOCAB, _MAX_LEN), p=_LETTER_FREQ / _LETTER_FREQ.sum())
    table = np.zeros((2 * _VOCAB, _MAX_LEN + 1), dtype=np.uint8)
    table[:_VOCAB, :_MAX_LEN] = letters
    table[_VOCAB:, :_MAX_LEN] = letters
    rows = np.arange(_VOCAB)
    table[rows, lengths] = ord(" ")
    table[rows + _VOCAB, lengths] = ord("\n")
    return table, np.concatenate((lengths, lengths)) + 1


def make_corpus(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of text-like words, the same for the same seed."""
    _checks.count("size", size, lo=1, what="an int number of bytes")
    _checks.count("seed", seed, what="an int seed")
    rng = np.random.Generator(np.random.PCG64(seed))
    table, used = _vocabulary(rng)
    keep = np.arange(_MAX_LEN + 1)[None, :] < used[:, None]  # which bytes of a row are text
    # Zipf-Mandelbrot ranks, p(r) ~ 1 / (r + q), drawn by inverting the
    # continuous CDF (a searchsorted over 50k ranks costs 3x more).
    q = 2.7
    span = np.log((_VOCAB + q) / q)
    parts: list[bytes] = []
    have = 0
    while have < size:
        ranks = q * np.exp(span * rng.random(_CHUNK_WORDS)) - q
        words = np.minimum(ranks.astype(np.int64), _VOCAB - 1)
        words += _VOCAB * (rng.random(_CHUNK_WORDS) < 1 / 12)  # newline after ~1 in 12
        chunk = table[words][keep[words]].tobytes()
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)[:size]


def make_patterns(corpus: bytes, count: int, seed: int = 0) -> list[bytes]:
    """``count`` strings to look for: two thirds cut from the corpus (they
    occur: 4-24 bytes, often across words), one third random letters (they
    mostly do not)."""
    _checks.count("count", count, lo=1)
    _checks.count("seed", seed, what="an int seed")
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    out: list[bytes] = []
    for k in range(count):
        length = int(rng.integers(4, 25))
        if k % 3 != 2 and len(corpus) > length:
            at = int(rng.integers(0, len(corpus) - length))
            out.append(corpus[at : at + length])
        else:
            out.append(rng.choice(_LETTERS, size=length).tobytes())
    return out
