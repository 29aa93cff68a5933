"""PowerCap and EnergyBudget: validation, default windows, shared meters."""

from __future__ import annotations

import math
import warnings

import pytest

from nrgloops.constraints import EnergyBudget, PowerCap, default_window
from nrgloops.testing import FakeMeter

BAD_AMOUNTS = [0, -1, -0.5, math.nan, math.inf, -math.inf]


@pytest.fixture
def fake() -> FakeMeter:
    return FakeMeter(40.0)


@pytest.mark.parametrize("watts", BAD_AMOUNTS)
def test_power_cap_rejects_non_positive_or_non_finite_watts(fake: FakeMeter, watts: float) -> None:
    with pytest.raises(ValueError, match=r"watts must be a finite number of watts > 0"):
        PowerCap(watts, meter=fake)


@pytest.mark.parametrize("watts", ["45", None, True, [45]])
def test_power_cap_rejects_non_numbers(fake: FakeMeter, watts: object) -> None:
    with pytest.raises(TypeError, match="watts must be a number"):
        PowerCap(watts, meter=fake)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -0.1, math.nan, math.inf])
def test_power_cap_rejects_bad_windows(fake: FakeMeter, window: float) -> None:
    with pytest.raises(ValueError, match=r"window must be a finite number of seconds > 0"):
        PowerCap(45, window=window, meter=fake)


@pytest.mark.parametrize("joules", BAD_AMOUNTS)
def test_energy_budget_rejects_bad_joules(fake: FakeMeter, joules: float) -> None:
    with pytest.raises(ValueError, match=r"joules must be a finite number of joules > 0"):
        EnergyBudget(joules, meter=fake)


def test_bad_meter_and_domain(fake: FakeMeter) -> None:
    with pytest.raises(TypeError, match="meter must be"):
        PowerCap(45, meter=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown domain 'dram-0'"):
        PowerCap(45, meter=fake, domain="dram-0")
    with pytest.raises(ValueError, match="unknown meter kind"):
        EnergyBudget(10, meter="no-such-meter")


def test_default_window_follows_the_sensor_granularity(fake: FakeMeter) -> None:
    assert PowerCap(45, meter=fake).window == pytest.approx(0.1)  # 1 ms counter
    slow = FakeMeter(40.0)
    slow.resolution_s = 0.1  # like NVML's energy counter
    assert PowerCap(45, meter=slow).window == pytest.approx(1.0)
    assert default_window(slow) == pytest.approx(1.0)
    assert EnergyBudget(5, meter=slow).window == pytest.approx(1.0)


def test_a_window_under_three_updates_is_widened_with_a_warning() -> None:
    slow = FakeMeter(40.0)
    slow.resolution_s = 0.1
    with pytest.warns(UserWarning, match=r"widened to 0.3 s"):
        cap = PowerCap(45, window=0.05, meter=slow)
    assert cap.window == pytest.approx(0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PowerCap(45, window=0.5, meter=slow).window == 0.5


def test_attributes_and_repr(fake: FakeMeter) -> None:
    cap = PowerCap(45, window=0.2, meter=fake, domain="package-0")
    assert (cap.watts, cap.window, cap.meter, cap.domain) == (45.0, 0.2, fake, "package-0")
    assert "45 W" in repr(cap) and "simulated" in repr(cap)  # a fake meter's label
    budget = EnergyBudget(100, meter=fake)
    assert budget.joules == 100.0 and "100 J" in repr(budget)


def test_the_same_kind_string_shares_one_meter() -> None:
    a = PowerCap(45, meter="model")
    b = EnergyBudget(100, meter="model")
    assert a.meter is b.meter
    assert not a.meter.measured


# -- run-time changes ---------------------------------------------------------------
def test_watts_and_joules_change_at_run_time_and_are_checked(fake: FakeMeter) -> None:
    cap = PowerCap(45, meter=fake)
    cap.watts = 25
    assert cap.watts == 25.0 and isinstance(cap.watts, float) and "25 W" in repr(cap)
    budget = EnergyBudget(100, meter=fake)
    budget.joules = 50
    assert budget.joules == 50.0
    for bad in BAD_AMOUNTS:
        with pytest.raises(ValueError, match="watts must be a finite number of watts > 0"):
            cap.watts = bad
        with pytest.raises(ValueError, match="joules must be a finite number of joules > 0"):
            budget.joules = bad
    with pytest.raises(TypeError, match="watts must be a number of watts, not str"):
        cap.watts = "30"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="joules must be a number of joules, not NoneType"):
        budget.joules = None  # type: ignore[assignment]
    assert cap.watts == 25.0 and budget.joules == 50.0  # refused values change nothing


@pytest.mark.parametrize("name", ["window", "meter", "domain"])
def test_what_a_running_loop_reads_refuses_assignment(fake: FakeMeter, name: str) -> None:
    for c in (PowerCap(45, meter=fake), EnergyBudget(100, meter=fake)):
        before = getattr(c, name)
        with pytest.raises(AttributeError, match=rf"{type(c).__name__}\.{name} cannot be changed"):
            setattr(c, name, 1.0)
        assert getattr(c, name) == before


def test_a_typo_in_an_attribute_raises() -> None:
    from nrgloops.testing import FakeMeter

    cap = PowerCap(10.0, meter=FakeMeter(1.0))
    with pytest.raises(AttributeError):
        cap.wats = 5  # type: ignore[attr-defined]
    budget = EnergyBudget(10.0, meter=FakeMeter(1.0))
    with pytest.raises(AttributeError):
        budget.joule = 5  # type: ignore[attr-defined]
    assert cap.watts == 10.0 and budget.joules == 10.0
