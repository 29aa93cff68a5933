"""The compiled C core, and the one place its return codes become exceptions.

C functions return ``-errno`` on failure (csrc/nrgloops.h says which errno
means what); :func:`raise_errno` turns one into ``MeterUnavailable`` (the
source cannot be used here: permission, absence) or ``NrgError``, with the
caller's words for what was being done and, per errno, why and what to do.
OS errors met in Python while probing a source go through the same function
(:func:`raise_os_error`), so every such message has one shape.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from nrgloops._errors import MeterUnavailable, NrgError

try:
    from nrgloops._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "nrgloops' C extension (nrgloops._native) is missing: reinstall with "
        "`pip install --force-reinstall nrgloops` on a machine with a C compiler"
    ) from exc

__all__ = ["check", "ffi", "lib", "new_handle", "raise_errno", "raise_os_error", "try_new"]

PERMISSION = frozenset({errno.EACCES, errno.EPERM})
# The source is not there: no file, no device, no such register or driver.
ABSENT = frozenset(
    {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO, errno.ENOSYS, errno.EOPNOTSUPP}
)


def raise_errno(
    code: int,
    what: str,
    fix: str = "",
    *,
    reasons: Mapping[int, str] | None = None,
    unavailable: bool = False,
) -> NoReturn:
    """Raise the exception that fits a C return code (``-errno``).

    The message is ``"{what}: {reason}"``, where the reason is
    ``reasons[errno]`` if the caller gave one, else the system's text for the
    errno followed by ``"; {fix}"``.  Permission and absence become
    MeterUnavailable, anything else NrgError; ``unavailable=True`` makes
    every failure a MeterUnavailable (opening a source that the kernel
    refused, whatever the errno, means it cannot be used here).
    """
    err = -code
    reason = (reasons or {}).get(err)
    if reason is None:
        reason = os.strerror(err) + (f"; {fix}" if fix else "")
    text = f"{what}: {reason}"
    if unavailable or err in PERMISSION or err in ABSENT:
        raise MeterUnavailable(text)
    raise NrgError(text)


def raise_os_error(
    exc: OSError, what: str, fix: str = "", *, reasons: Mapping[int, str] | None = None
) -> NoReturn:
    """:func:`raise_errno` for an OSError met in Python (opening a sysfs file):
    it always means the source cannot be used here."""
    raise_errno(-(exc.errno or errno.EIO), what, fix, reasons=reasons, unavailable=True)


def check(
    code: int,
    what: str,
    fix: str = "",
    *,
    reasons: Mapping[int, str] | None = None,
    unavailable: bool = False,
) -> int:
    """Pass through a non-negative C return code, raise for a negative one."""
    if code < 0:
        raise_errno(code, what, fix, reasons=reasons, unavailable=unavailable)
    return code


def try_new(constructor: Callable[..., int], *args: Any) -> tuple[int, Any]:
    """Call a C ``*_new(&out, ...)`` constructor: ``(rc, source)``.

    On success the source is owned (freed when garbage collected); on
    failure it is None and ``rc`` is the ``-errno``, for callers that decide
    what to do (try another library, count GPUs for the message) first.
    """
    out = ffi.new("nrg_source **")
    rc = constructor(out, *args)
    if rc < 0:
        return rc, None
    return rc, ffi.gc(out[0], lib.nrg_source_free)


def new_handle(
    constructor: Callable[..., int],
    *args: Any,
    what: str,
    fix: str = "",
    reasons: Mapping[int, str] | None = None,
    unavailable: bool = False,
) -> Any:
    """Call a C ``*_new(&out, ...)`` constructor and own the result.

    The source is freed when the returned pointer is garbage collected.  A
    failure raises as :func:`check` does.
    """
    rc, source = try_new(constructor, *args)
    check(rc, what, fix, reasons=reasons, unavailable=unavailable)
    return source
