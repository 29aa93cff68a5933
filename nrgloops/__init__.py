"""nrgloops: hold a soft power cap or an energy budget from inside your own loops.

After "NRG-Loops: Adjusting Power from within Applications" (Kambadur & Kim,
CGO 2016).  Private modules are re-exported here; this is the public API.
"""

from __future__ import annotations

from nrgloops._errors import MeterUnavailable, NrgError
from nrgloops.meters import Meter, Reading, open_meter
from nrgloops.sampler import Sampler

__version__ = "0.1.0"

__all__ = [
    "Meter",
    "MeterUnavailable",
    "NrgError",
    "Reading",
    "Sampler",
    "open_meter",
]
