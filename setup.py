"""Only here for cffi_modules: every other piece of metadata is in pyproject.toml."""

import shutil
import sys
import sysconfig

from setuptools import setup


def _check_compiler() -> None:
    # A missing compiler fails deep inside distutils; say what to do instead.
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        sys.exit(
            f"nrgloops: no C compiler found ({cc!r} is not on PATH). nrgloops builds a "
            "small C extension: install a compiler and the Python headers first, e.g. "
            "`apt-get install gcc python3-dev` or `dnf install gcc python3-devel`."
        )


_check_compiler()
setup(cffi_modules=["ffi_build.py:ffi"])
