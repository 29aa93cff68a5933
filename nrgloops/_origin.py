"""Where a warning raised inside the library points: the user's line."""

from __future__ import annotations

import os
import sys

__all__ = ["user_stacklevel"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that
    points at the first frame outside nrgloops (the user's call of an adapted
    function, ``loop.step()``, ``knob.update()`` or the ``for`` over a
    truncated loop), however deep in the library the warning is raised."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE)
        or frame.f_code.co_filename.startswith("<nrgloops")  # an adapted function's hot path
    ):
        frame = frame.f_back
        level += 1
    return level
