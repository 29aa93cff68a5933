"""The fake msr tree lives in the package (benchmarks use it too):
see nrgloops/_fakes/msr_tree.py."""

from nrgloops._fakes.msr_tree import *  # noqa: F403
from nrgloops._fakes.msr_tree import __all__  # noqa: F401
