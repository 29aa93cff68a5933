"""Adapted functions pickle by reference, like functions: multiprocessing works,
and each process runs its own loop."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import pytest

from nrgloops import Knob, PowerCap, nrg_adapt


@nrg_adapt(PowerCap(1e6, meter="model"), knob=Knob(1, 2, 1))
def double(x: int) -> tuple[int, int, int]:
    """x * 2, this process's id, and this process's iteration count so far."""
    return x * 2, os.getpid(), double.report.iterations["adapt"] or 0


def test_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(double)) is double

    @nrg_adapt(PowerCap(1e6, meter="model"), knob=Knob(1, 2, 1))
    def local(x: int) -> int:
        return x

    with pytest.raises((pickle.PicklingError, AttributeError), match="local"):
        pickle.dumps(local)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_map_each_process_its_own_loop(method: str) -> None:
    try:
        double(0)  # running here: a forked child must not carry these counts on
        double(0)
        assert double.report.iterations["adapt"] == 2
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            out = pool.map(double, range(12), chunksize=3)
        assert [y for y, _, _ in out] == [2 * x for x in range(12)]
        counts: dict[int, list[int]] = {}
        for _, pid, n in out:
            counts.setdefault(pid, []).append(n)
        assert os.getpid() not in counts
        for seen in counts.values():  # 1, 2, ... in each process: a loop of its own
            assert sorted(seen) == list(range(1, len(seen) + 1))
        assert double.report.iterations["adapt"] == 2  # the parent's loop is untouched
    finally:
        double.close()
