"""The compiled C core, and the one place its return codes become exceptions."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, NoReturn

from nrgloops._errors import MeterUnavailable, NrgError

try:
    from nrgloops._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "nrgloops' C extension (nrgloops._native) is missing: reinstall with "
        "`pip install --force-reinstall nrgloops` on a machine with a C compiler"
    ) from exc

__all__ = ["check", "ffi", "lib", "new_handle", "raise_errno"]

_PERMISSION = (errno.EACCES, errno.EPERM)
_ABSENT = (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO, errno.ENOSYS, errno.EOPNOTSUPP)


def raise_errno(code: int, what: str, fix: str = "") -> NoReturn:
    """Raise the exception that fits a C return code (-errno).

    Permission and absence become MeterUnavailable (the source cannot be used
    here, and ``fix`` says what to do); anything else is an NrgError.
    """
    err = -code
    text = f"{what}: {os.strerror(err)}"
    if fix:
        text += f"; {fix}"
    if err in _PERMISSION or err in _ABSENT:
        raise MeterUnavailable(text)
    raise NrgError(text)


def check(code: int, what: str, fix: str = "") -> int:
    """Pass through a non-negative C return code, raise for a negative one."""
    if code < 0:
        raise_errno(code, what, fix)
    return code


def new_handle(constructor: Callable[..., int], *args: Any, what: str, fix: str = "") -> Any:
    """Call a C ``*_new(&out, ...)`` constructor and own the result.

    The source is freed when the returned pointer is garbage collected.
    """
    out = ffi.new("nrg_source **")
    check(constructor(out, *args), what, fix)
    return ffi.gc(out[0], lib.nrg_source_free)
