"""The model meter estimates, says so, and rises with CPU load."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nrgloops import Sampler, open_meter
from nrgloops.meters.model import open_model


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_model_is_labelled_estimated() -> None:
    m = open_model()
    assert (m.kind, m.measured, m.label, m.domains) == (
        "model",
        False,
        "estimated",
        ("package-0",),
    )
    assert "estimated" in m.description


@pytest.mark.parametrize("scope", ["process", "system"])
def test_model_rises_under_cpu_load(scope: str) -> None:
    m = open_model(idle_watts=5.0, watts_per_core=10.0, scope=scope)
    with Sampler(m) as s:
        time.sleep(0.3)
        idle = s.power(window=0.25)
        _spin(0.3)
        busy = s.power(window=0.25)
    cores = os.cpu_count() or 1
    if scope == "system" and idle > 5.0 + 10.0 * (cores - 0.6):
        pytest.skip(f"other programs keep every core busy ({idle:.1f} W before the spin)")
    assert busy > idle + 4.0  # one busy core adds ~10 W
    assert busy <= 5.0 + 10.0 * 2 + 1.0  # never more than every core busy


def test_process_model_idle_is_idle_watts() -> None:
    m = open_model(idle_watts=7.0, watts_per_core=10.0, scope="process")
    with Sampler(m, period=0.005) as s:
        time.sleep(0.3)
        assert s.power(window=0.25) == pytest.approx(7.0, abs=1.0)


def test_energy_never_decreases() -> None:
    m = open_model(scope="system")
    values = [m.read().joules["package-0"] for _ in range(200)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_coefficients_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NRGLOOPS_MODEL_IDLE_W", "12.5")
    monkeypatch.setenv("NRGLOOPS_MODEL_W_PER_CORE", "3")
    assert "12.5 W idle + 3 W per busy core" in open_model().description
    monkeypatch.setenv("NRGLOOPS_MODEL_IDLE_W", "lots")
    with pytest.raises(ValueError, match="NRGLOOPS_MODEL_IDLE_W"):
        open_model()


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"idle_watts": -1.0}, ValueError, "idle_watts"),
        ({"watts_per_core": float("inf")}, ValueError, "watts_per_core"),
        ({"watts_per_core": "8"}, TypeError, "watts_per_core"),
        ({"scope": "galaxy"}, ValueError, "scope"),
        ({"scope": ["system"]}, ValueError, "scope"),
        ({"idle_watts": 10**400}, ValueError, "idle_watts"),  # not an OverflowError
        ({"stat_path": 1}, TypeError, "stat_path"),  # never file descriptor 1
        ({"stat_path": ""}, ValueError, "stat_path"),
    ],
)
def test_bad_coefficients(kwargs: dict[str, object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        open_model(**kwargs)  # type: ignore[arg-type]


def test_stat_path_may_be_a_pathlib_path(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 0 0 0 0 0 0\n")
    m = open_model(scope="system", stat_path=stat)
    assert m.read().joules["package-0"] >= 0


def test_open_meter_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown meter kind 'rapl'.*auto"):
        open_meter("rapl")
    with pytest.raises(TypeError, match="kind"):
        open_meter(3)  # type: ignore[arg-type]
