"""Placeholder: the powercap meter is being written."""

from __future__ import annotations

from typing import Any

from nrgloops._errors import MeterUnavailable
from nrgloops.meters._base import Meter

__all__ = ["open_powercap"]


def open_powercap(**options: Any) -> Meter:
    raise MeterUnavailable("the powercap meter is not implemented yet")
