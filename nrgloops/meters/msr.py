"""Placeholder: the msr meter is being written."""

from __future__ import annotations

from typing import Any

from nrgloops._errors import MeterUnavailable
from nrgloops.meters._base import Meter

__all__ = ["open_msr"]


def open_msr(**options: Any) -> Meter:
    raise MeterUnavailable("the msr meter is not implemented yet")
