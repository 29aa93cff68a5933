"""Placeholder: the perf meter is being written."""

from __future__ import annotations

from typing import Any

from nrgloops._errors import MeterUnavailable
from nrgloops.meters._base import Meter

__all__ = ["open_perf"]


def open_perf(**options: Any) -> Meter:
    raise MeterUnavailable("the perf meter is not implemented yet")
