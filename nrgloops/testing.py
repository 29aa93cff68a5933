"""Test helpers for code that uses nrgloops (after trio.testing).

``FakeMeter`` is a meter whose power you set; its energy is integrated over
real time by the same C source and sampler path the real meters use, so a
closed loop can be driven deterministically without hardware.
"""

from __future__ import annotations

import math

from nrgloops import _checks
from nrgloops._ffi import check, lib, new_handle
from nrgloops.meters._base import Meter

__all__ = ["FakeMeter"]


def _watts(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"watts must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"watts must be a finite number >= 0, got {value!r}")
    return float(value)


class FakeMeter(Meter):
    """A one-domain ("package-0") meter whose power the caller sets.

    >>> f = FakeMeter(watts=40.0)
    >>> f.watts = 80.0      # from now on the energy grows at 80 W

    ``measured`` is True so that code paths for real counters are exercised;
    pass ``measured=False`` to exercise the estimated ones.
    """

    def __init__(self, watts: float = 0.0, *, measured: bool = True) -> None:
        w = _watts(watts)
        super().__init__(
            new_handle(lib.nrg_fake_new, w, what="fake meter"),
            kind="fake",
            measured=_checks.boolean("measured", measured),
            domains=("package-0",),
            resolution_s=0.001,
            default_period=0.001,
            description="a fake meter whose power the test sets",
        )
        self._watts = w

    @property
    def watts(self) -> float:
        """The power now, W."""
        return self._watts

    @watts.setter
    def watts(self, value: float) -> None:
        w = _watts(value)
        check(lib.nrg_fake_set_watts(self._source, w), "setting the fake meter's power")
        self._watts = w
