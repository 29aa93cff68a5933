"""The public API: what the public namespaces export, frozen here.

The rule (docs/architecture.md, "Public and private"): the public API is the
``__all__`` of the public namespaces listed in ``FROZEN``, and nothing else;
every other module is an implementation module whose public names are
re-exported by one of these.  A change to the API is a deliberate change to
``FROZEN`` (and a line in CHANGELOG.md).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

FROZEN: dict[str, list[str]] = {
    "nrgloops": [
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
    ],
    "nrgloops.meters": ["KINDS", "Meter", "Reading", "open_meter"],
    "nrgloops.testing": ["FakeClock", "FakeMeter", "Sample", "SimulatedPlant"],
    "nrgloops.bench": ["EXTRA_MISSING", "Searcher", "check_extra", "make_corpus", "make_patterns"],
    "nrgloops.governors": [
        "GOVERNORS",
        "CgroupGovernor",
        "Governor",
        "GovernorBusy",
        "GovernorUnavailable",
        "Journal",
        "JournalUntrusted",
        "PowercapGovernor",
        "RestoreResult",
        "Terminated",
        "Trace",
        "Zone",
        "governed_trees",
        "journal_dir",
        "open_governor",
        "probe_governors",
        "restore",
        "signals_raise",
        "trusted_dir",
    ],
    "nrgloops.measure": ["Measurement", "measure"],
    "nrgloops.export": ["DEFAULT_PORT", "Exporter", "start_exporter"],
    "nrgloops.cluster": ["POLICIES", "LeaseState", "LeasedCap", "PowerBudget"],
    "nrgloops.cli": ["main"],
}


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # an extra's namespace without the extra
        pytest.skip(f"{name} needs an extra that is not installed: {exc}")


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_the_public_namespaces_export_what_is_frozen(name: str) -> None:
    module = _module(name)
    exported = sorted(getattr(module, "__all__", []))
    assert exported == sorted(FROZEN[name]), (
        f"the public API of {name} changed: if that is meant, set FROZEN[{name!r}] in "
        f"tests/test_exports.py to {exported} and say what changed in CHANGELOG.md"
    )
    for attr in exported:
        value = getattr(module, attr)  # every exported name resolves
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def _public_types() -> set[type]:
    found: set[type] = set()
    for name in FROZEN:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.update(v for v in vars(module).values() if inspect.isclass(v))
    return found


def _classes_in(hint: Any) -> set[type]:
    """The nrgloops classes a type hint names (through Optional, list, tuple...)."""
    if inspect.isclass(hint) and hint.__module__.startswith("nrgloops"):
        return {hint}
    origin = typing.get_origin(hint)
    out = _classes_in(origin) if origin is not None else set()
    for arg in typing.get_args(hint):
        out |= _classes_in(arg)
    return out


def _returns(fn: Any) -> set[type]:
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation only a type checker can resolve
        return set()
    return _classes_in(hints.get("return"))


def test_the_types_public_functions_return_are_public() -> None:
    public = _public_types()
    missing: list[str] = []
    for name in FROZEN:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in module.__all__:
            value = getattr(module, attr)
            members = [value]
            if inspect.isclass(value):
                members = [
                    m
                    for n, m in inspect.getmembers(value)
                    if not n.startswith("_") and (inspect.isfunction(m) or inspect.ismethod(m))
                ]
            for fn in members:
                if not callable(fn):
                    continue
                for cls in _returns(fn) - public:
                    missing.append(f"{name}.{attr}: {getattr(fn, '__qualname__', fn)} -> {cls}")
    assert not missing, "returned types that no public namespace exports:\n" + "\n".join(missing)


def test_examples_import_only_the_public_namespaces() -> None:
    bad = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad += [
                f"{path.name}: {n}" for n in names if n.startswith("nrgloops") and n not in FROZEN
            ]
    assert not bad, "examples must use the public API only:\n" + "\n".join(bad)
