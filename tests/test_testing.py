"""nrgloops.testing: the FakeClock and the SimulatedPlant."""

from __future__ import annotations

import math
import time

import pytest

from nrgloops._errors import NrgError
from nrgloops.control import Knob
from nrgloops.testing import FakeClock, FakeMeter, SimulatedPlant


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(5.0)
    assert clock() == clock.now == 5.0
    clock.advance(0.25)
    clock.sleep(0.25)
    assert clock() == 5.5
    with pytest.raises(ValueError, match="seconds must be a finite number of seconds >= 0"):
        clock.advance(-1)
    with pytest.raises(TypeError, match="start must be a number of seconds"):
        FakeClock("0")  # type: ignore[arg-type]


def test_plant_on_a_fake_clock_integrates_its_energy() -> None:
    clock = FakeClock()
    plant = SimulatedPlant(lambda v: 10.0 + 5.0 * v, clock=clock, iteration_s=0.01)
    assert math.isnan(plant.windowed(0.1))
    for _ in range(10):
        plant.iterate(2)  # 20 W
    for _ in range(10):
        plant.iterate(0)  # 10 W
    assert clock() == pytest.approx(0.2)
    assert plant.energy_j == pytest.approx(3.0)
    assert plant.windowed(0.1) == pytest.approx(10.0)
    assert plant.windowed(0.2) == pytest.approx(15.0)
    assert plant.work == 20.0 and plant.iterations == 20  # work: the level itself


def test_a_sequence_of_watts_per_grid_level() -> None:
    plant = SimulatedPlant([13.0, 20.0], lo=1, step=1, clock=FakeClock(), work=lambda v: v * v)
    assert plant.iterate(1) == 13.0 and plant.iterate(2) == 20.0
    assert plant.work == 5.0
    with pytest.raises(ValueError, match="level must be on the plant's grid"):
        plant.iterate(3)


def test_phases_scale_the_power_at_their_times() -> None:
    plant = SimulatedPlant(lambda v: 10.0, phases=[(0.05, 1.3), (0.1, 0.5)], clock=FakeClock())
    drawn = [plant.iterate(0) for _ in range(150)]
    assert drawn[10] == 10.0 and drawn[60] == pytest.approx(13.0) and drawn[120] == 5.0
    assert plant.factor(0.07) == 1.3 and plant.power(0, at=0.2) == 5.0


def test_noise_is_bounded_and_seeded() -> None:
    def run(seed: int) -> list[float]:
        p = SimulatedPlant(lambda v: 100.0, noise=0.05, seed=seed, clock=FakeClock())
        return [p.iterate(0) for _ in range(500)]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert all(95.0 <= w <= 105.0 for w in a) and max(a) > 104 and min(a) < 96


def test_noise_holds_for_noise_s() -> None:
    p = SimulatedPlant(lambda v: 100.0, noise=0.05, noise_s=0.01, clock=FakeClock())
    drawn = [p.iterate(0) for _ in range(100)]  # 1 ms iterations: 10 per draw
    assert len(set(drawn)) == 10


def test_the_lag_follows_a_step_exponentially() -> None:
    p = SimulatedPlant(lambda v: 10.0 * v, lag_s=0.01, clock=FakeClock())
    p.iterate(1)  # the first iteration draws at once
    drawn = [p.iterate(2) for _ in range(60)]  # 1 ms each: 6 time constants
    assert drawn[0] == pytest.approx(10.0 + 10.0 * (1 - math.exp(-0.1)))
    assert drawn[9] == pytest.approx(20.0 - 10.0 * math.exp(-1.0))
    assert drawn[59] == pytest.approx(20.0, rel=0.01)


def test_in_real_time_the_plant_drives_its_fake_meter() -> None:
    meter = FakeMeter(0.0)
    plant = SimulatedPlant(lambda v: 10.0 + v, meter=meter, iteration_s=0.001)
    t = time.monotonic()
    plant.iterate(5)
    assert meter.watts == 15.0 and time.monotonic() - t >= 0.001
    with pytest.raises(NrgError, match="needs a FakeClock"):
        plant.windowed(0.1)
    with pytest.raises(NrgError, match="needs a FakeClock"):
        plant.drive(Knob(0, 1, 1), 10.0, 1.0)


def test_drive_runs_a_knob_in_simulated_time() -> None:
    plant = SimulatedPlant(lambda v: 10.0 + 5.0 * v, clock=FakeClock())
    knob = Knob(0, 4, 1)
    t = time.perf_counter()
    trace = plant.drive(knob, lambda s: 22.0 if s < 2 else 16.0, seconds=4.0)
    assert time.perf_counter() - t < 4.0  # faster than real time
    assert trace[0].t == 0.0 and trace[-1].t == pytest.approx(4.0, abs=0.02)
    assert {s.cap_w for s in trace} == {22.0, 16.0}
    assert trace[-1].work == plant.work and trace[-1].energy_j == plant.energy_j


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"power": 3}, TypeError, "power must be a function of the level or a non-empty"),
        ({"power": []}, TypeError, "power must be"),
        ({"power": [1.0, -2.0]}, ValueError, r"power\[1\] must be a finite number of watts >= 0"),
        ({"iteration_s": 0}, ValueError, "iteration_s must be a finite number of seconds > 0"),
        ({"lag_s": -1}, ValueError, "lag_s must be"),
        ({"noise": 1.0}, ValueError, r"noise must be .* in \[0, 1\)"),
        ({"noise_s": 0}, ValueError, "noise_s must be"),
        ({"step": 0}, ValueError, "step must be"),
        ({"lo": "a"}, TypeError, "lo must be a number"),
        ({"phases": 3}, TypeError, "phases must be a sequence of"),
        ({"phases": [(1.0,)]}, TypeError, r"phases\[0\] must be an \(at_s, factor\) pair"),
        ({"phases": [(1.0, 0.0)]}, ValueError, r"phases\[0\] factor must be"),
        ({"phases": [(2.0, 1.1), (1.0, 1.2)]}, ValueError, "phases must be in increasing time"),
        ({"work": 3}, TypeError, "work must be a function"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"clock": 3}, TypeError, "clock must be a nrgloops.testing.FakeClock"),
        ({"meter": "fake"}, TypeError, "meter must be a nrgloops.testing.FakeMeter"),
    ],
)
def test_plant_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    args: dict[str, object] = {"power": lambda v: 1.0, **kwargs}
    with pytest.raises(error, match=match):
        SimulatedPlant(**args)  # type: ignore[arg-type]


def test_drive_bad_input() -> None:
    plant = SimulatedPlant(lambda v: 1.0, clock=FakeClock())
    with pytest.raises(TypeError, match="knob must be a nrgloops.Knob"):
        plant.drive(3, 10.0, 1.0)  # type: ignore[arg-type]
    for kwargs, match in [
        ({"cap": 0}, "cap must be a finite number of watts > 0"),
        ({"seconds": -1}, "seconds must be"),
        ({"window": 0}, "window must be"),
        ({"tick_s": 0}, "tick_s must be"),
        ({"record_s": math.nan}, "record_s must be"),
    ]:
        args: dict[str, object] = {"cap": 10.0, "seconds": 1.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            plant.drive(Knob(0, 1, 1), **args)  # type: ignore[arg-type]
