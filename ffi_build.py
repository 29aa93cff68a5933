"""Build script for the C core (run by setuptools through ``cffi_modules``).

It lives outside the package on purpose: the installed package only ever sees
the compiled ``nrgloops._native`` module.  ``csrc/nrgloops.h`` is the single
declaration of what Python may call.
"""

from __future__ import annotations

import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _cdef_text(header: str) -> str:
    """The header without preprocessor lines, which cdef() does not take."""
    with open(header, encoding="utf-8") as f:
        text = f.read()
    return re.sub(r"^\s*#.*$", "", text, flags=re.MULTILINE)


ffi = FFI()
ffi.cdef(_cdef_text(os.path.join(CSRC, "nrgloops.h")))
ffi.set_source(
    "nrgloops._native",
    '#include "nrgloops.h"',
    sources=sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(CSRC, "*.c"))),
    include_dirs=[os.path.relpath(CSRC, HERE)],
    depends=sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(CSRC, "*.h"))),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    libraries=["pthread", "dl", "m"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
