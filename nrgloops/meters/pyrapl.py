"""Placeholder: the pyrapl meter is being written."""

from __future__ import annotations

from typing import Any

from nrgloops._errors import MeterUnavailable
from nrgloops.meters._base import Meter

__all__ = ["open_pyrapl"]


def open_pyrapl(**options: Any) -> Meter:
    raise MeterUnavailable("the pyrapl meter is not implemented yet")
