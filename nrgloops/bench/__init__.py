"""The substring-search benchmark: a guest of the core, installed with the ``bench`` extra.

``pip install "nrgloops[bench]"`` brings numpy (the corpus) and matplotlib
(the figures); the core never imports this package.  Its public API is what
an example needs to run the paper's workload: a deterministic corpus, the
strings to look for in it, and a GIL-free multi-threaded search.  The names
are imported on first use, so that importing a submodule that needs neither
numpy nor matplotlib works without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nrgloops.bench.corpus import make_corpus, make_patterns
    from nrgloops.bench.search import Searcher

__all__ = ["EXTRA_MISSING", "Searcher", "check_extra", "make_corpus", "make_patterns"]

EXTRA_MISSING = 'this needs the "bench" extra (numpy, matplotlib): pip install "nrgloops[bench]"'


def check_extra() -> None:
    """ImportError saying what to install unless numpy and matplotlib import."""
    for module in ("numpy", "matplotlib"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{module} is missing: {EXTRA_MISSING}") from exc


_HOME = {"Searcher": "search", "make_corpus": "corpus", "make_patterns": "corpus"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
