"""Throughput of the search kernel against Python's bytes.count, per core.

    python benchmarks/search_kernel.py [--size-mb 64] [--repeat 5] [--out benchmarks/results]

For each pattern length, a few strings cut from the corpus (they occur) and a
few random ones (they mostly do not) are counted in a text corpus (the
benchmark's, see nrgloops.bench.corpus) by the kernel on one thread and by
``bytes.count``; each figure is the best of ``--repeat`` runs (the least
disturbed by other work on the machine).  GB/s = corpus bytes / seconds.
Then the kernel's scaling with threads.  Prints a table, writes
``search_kernel.json`` and ``search_kernel.png`` to ``--out``.

Note: bytes.count counts non-overlapping occurrences and the kernel
overlapping ones; the patterns are checked to give the same count (none of
them overlaps itself in this corpus).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nrgloops import _checks
from nrgloops._machine import cpu_count, machine_info
from nrgloops.bench.corpus import make_corpus
from nrgloops.bench.search import Searcher

LENGTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
PER_KIND = 3


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _count_all(s: Searcher, pats: list[bytes], threads: int) -> list[int]:
    return [s.count(p, threads) for p in pats]


def patterns(corpus: bytes, length: int, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(PER_KIND):
        at = int(rng.integers(0, len(corpus) - length))
        out.append(("present", corpus[at : at + length]))
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    for _ in range(PER_KIND):
        out.append(("absent", rng.choice(letters, size=length).tobytes()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    try:
        _checks.number("--size-mb", args.size_mb, "MiB", lo=0.01, hi=4096.0)
        _checks.count("--repeat", args.repeat, lo=1)
        _checks.count("--seed", args.seed)
    except ValueError as exc:
        ap.error(str(exc))

    corpus = make_corpus(int(args.size_mb * (1 << 20)), args.seed)
    n = len(corpus)
    rng = np.random.Generator(np.random.PCG64(args.seed + 11))
    rows: list[dict[str, Any]] = []
    print(f"corpus {n / (1 << 20):.0f} MiB; best of {args.repeat}; GB/s = 1e9 bytes/s, one thread")
    print(f"{'len':>4} {'kind':<8} {'ours GB/s':>10} {'bytes.count GB/s':>17} {'ratio':>6}")
    with Searcher(corpus, max_threads=cpu_count()) as s:
        s.count(b"warm-up", 1)
        for length in LENGTHS:
            for kind, pat in patterns(corpus, length, rng):
                ours_n, ref_n = s.count(pat, 1), corpus.count(pat)
                overlapping = any(pat[i:] == pat[: length - i] for i in range(1, length))
                if ours_n != ref_n and not overlapping:
                    print(f"MISMATCH {pat!r}: ours {ours_n}, bytes.count {ref_n}")
                    return 1
                t_ours = best(partial(s.count, pat, 1), args.repeat)
                t_ref = best(partial(corpus.count, pat), args.repeat)
                rows.append(
                    {
                        "length": length,
                        "kind": kind,
                        "pattern": pat.decode("latin-1"),
                        "matches": ours_n,
                        "ours_gbs": n / t_ours / 1e9,
                        "bytes_count_gbs": n / t_ref / 1e9,
                    }
                )
                r = rows[-1]
                print(
                    f"{length:>4} {kind:<8} {r['ours_gbs']:>10.2f} {r['bytes_count_gbs']:>17.2f}"
                    f" {r['ours_gbs'] / r['bytes_count_gbs']:>5.1f}x"
                )
        # Scaling with threads, over every pattern.
        allpats = [r["pattern"].encode("latin-1") for r in rows]
        scaling = []
        for k in range(1, cpu_count() + 1):
            t = best(partial(_count_all, s, allpats, k), max(1, args.repeat // 2))
            scaling.append({"threads": k, "gbs": n * len(allpats) / t / 1e9})
    ours = statistics.median(r["ours_gbs"] for r in rows)
    ref = statistics.median(r["bytes_count_gbs"] for r in rows)
    worst = min(r["ours_gbs"] / r["bytes_count_gbs"] for r in rows)
    print(
        f"median over {len(rows)} patterns: ours {ours:.2f} GB/s, bytes.count {ref:.2f} GB/s "
        f"({ours / ref:.1f}x); worst pattern {worst:.1f}x"
    )
    print("threads: " + ", ".join(f"{x['threads']}: {x['gbs']:.2f} GB/s" for x in scaling))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine_info(),
        "corpus_bytes": n,
        "repeat": args.repeat,
        "rows": rows,
        "median_ours_gbs": ours,
        "median_bytes_count_gbs": ref,
        "worst_ratio": worst,
        "scaling": scaling,
    }
    (out / "search_kernel.json").write_text(json.dumps(doc, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("present", "o"), ("absent", "s")):
        for key, color, name in (
            ("ours_gbs", "tab:green", "nrgloops kernel"),
            ("bytes_count_gbs", "tab:gray", "bytes.count"),
        ):
            xs = sorted({r["length"] for r in rows})
            ys = [
                statistics.median(r[key] for r in rows if r["length"] == x and r["kind"] == kind)
                for x in xs
            ]
            a.plot(
                xs,
                ys,
                marker=marker,
                color=color,
                linestyle="-" if kind == "present" else ":",
                label=f"{name}, {kind}",
            )
    a.set_xscale("log", base=2)
    a.set_xlabel("pattern length (bytes)")
    a.set_ylabel("GB/s, one thread")
    a.legend(fontsize=8)
    a.grid(True, alpha=0.3)
    b.plot(
        [x["threads"] for x in scaling], [x["gbs"] for x in scaling], marker="o", color="tab:green"
    )
    b.set_xticks([x["threads"] for x in scaling])
    b.set_ylim(bottom=0)
    a.set_ylim(bottom=0)
    b.set_xlabel("threads")
    b.set_ylabel("GB/s, all patterns")
    b.grid(True, alpha=0.3)
    m = doc["machine"]
    fig.suptitle(
        f"substring count: {m['cpu_model']} ({m['cores']} cores), {n / (1 << 20):.0f} MiB corpus"
    )
    fig.tight_layout()
    fig.savefig(out / "search_kernel.png", dpi=110)
    print(f"wrote {out / 'search_kernel.json'} and {out / 'search_kernel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
