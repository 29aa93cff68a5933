"""Exceptions.  Every error nrgloops raises on purpose derives from NrgError,
except bad arguments, which raise the built-in ValueError / TypeError."""

from __future__ import annotations

__all__ = ["MeterUnavailable", "NrgError"]


class NrgError(Exception):
    """Base class of nrgloops' own errors."""


class MeterUnavailable(NrgError):
    """An energy source cannot be used here; the message says why and how to fix it."""
