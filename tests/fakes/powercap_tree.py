"""The fake powercap tree lives in the package (benchmarks use it too):
see nrgloops/_fakes/powercap_tree.py."""

from nrgloops._fakes.powercap_tree import *  # noqa: F403
from nrgloops._fakes.powercap_tree import __all__  # noqa: F401
