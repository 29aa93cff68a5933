"""Shared fixtures: every test must leave no sampler thread running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nrgloops import sampler


@pytest.fixture(autouse=True)
def no_sampler_left_running() -> Iterator[None]:
    yield
    left = [f"{c.meter.kind} period={c.period}" for c in sampler._cores.values()]
    for core in list(sampler._cores.values()):  # do not let one leak fail every later test
        core.stop()
    sampler._cores.clear()
    assert not left, f"sampler threads left running after the test: {left}"
