"""Huge ints are ValueErrors naming the argument (nrgloops._checks), never OverflowError."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nrgloops import Knob
from nrgloops.testing import FakeMeter

HUGE = 10**400  # larger than any float


def _set_watts(value: object) -> None:
    FakeMeter().watts = value  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: FakeMeter(HUGE), "watts"),
        (lambda: _set_watts(HUGE), "watts"),
        (lambda: Knob(0, 4, 1).update(power=HUGE, cap=10, now=0.0), "power"),
        (lambda: Knob(0, 4, 1).update(power=1, cap=HUGE, now=0.0), "cap"),
        (lambda: Knob(0, 4, 1).update(power=1, cap=10, now=HUGE), "now"),
        (lambda: Knob(0, 4, 1).update(power=1, cap=10, now=0.0, dwell=-HUGE), "dwell"),
    ],
)
def test_huge_ints_are_value_errors(call: Callable[[], object], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        call()
