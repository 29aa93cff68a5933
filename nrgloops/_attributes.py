"""Attributes of user-facing objects (knobs, caps, budgets) that are checked
where they enter: one descriptor for "checked, takes effect at the next use"
and "read-only, and here is why", so that no assignment is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Setting", "fixed"]


class Setting:
    """An attribute whose assignments go through ``check`` (which returns the
    value to store or raises naming the attribute); with ``check`` None it is
    read-only and an assignment raises AttributeError saying ``why``.

    The value lives in the slot ``_<name>``: owners with ``__slots__`` list it.
    """

    def __init__(self, check: Callable[[Any], Any] | None, why: str = "") -> None:
        self.check, self.why = check, why

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, "_" + name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj, self.slot)

    def __set__(self, obj: object, value: Any) -> None:
        if self.check is None:
            kind = type(obj).__name__
            raise AttributeError(
                f"{kind}.{self.name} cannot be changed after it is made: {self.why}; "
                f"make a new {kind} instead"
            )
        setattr(obj, self.slot, self.check(value))


def fixed(why: str) -> Setting:
    """A read-only attribute that says why it cannot change at run time."""
    return Setting(None, why)
