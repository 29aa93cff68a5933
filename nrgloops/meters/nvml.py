"""Placeholder: the nvml meter is being written."""

from __future__ import annotations

from typing import Any

from nrgloops._errors import MeterUnavailable
from nrgloops.meters._base import Meter

__all__ = ["open_nvml"]


def open_nvml(**options: Any) -> Meter:
    raise MeterUnavailable("the nvml meter is not implemented yet")
