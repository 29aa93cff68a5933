"""nrgloops: hold a soft power cap or an energy budget from inside your own loops.

After "NRG-Loops: Adjusting Power from within Applications" (Kambadur & Kim,
CGO 2016).  Private modules are re-exported here; this is the public API.
"""

from __future__ import annotations

from nrgloops._errors import MeterUnavailable, NrgError
from nrgloops.carbon import CarbonBudget, CarbonIntensity
from nrgloops.constraints import EnergyBudget, PowerCap
from nrgloops.control import Knob
from nrgloops.export import start_exporter
from nrgloops.loops import (
    AdaptedFunction,
    AdaptLoop,
    PerforatedLoop,
    TruncatedLoop,
    nrg_adapt,
    nrg_alternate,
    perforate,
    truncate,
)
from nrgloops.meters import Meter, Reading, open_meter
from nrgloops.report import Report
from nrgloops.sampler import Sampler

__version__ = "0.1.0"

__all__ = [
    "AdaptLoop",
    "AdaptedFunction",
    "CarbonBudget",
    "CarbonIntensity",
    "EnergyBudget",
    "Knob",
    "Meter",
    "MeterUnavailable",
    "NrgError",
    "PerforatedLoop",
    "PowerCap",
    "Reading",
    "Report",
    "Sampler",
    "TruncatedLoop",
    "nrg_adapt",
    "nrg_alternate",
    "open_meter",
    "perforate",
    "start_exporter",
    "truncate",
]
