"""The Prometheus exporter, scraped over real HTTP on 127.0.0.1 and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from typing import Any

import pytest

import nrgloops
from nrgloops.cli import main
from nrgloops.testing import FakeMeter

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from nrgloops.export import start_exporter  # noqa: E402


def scrape(url: str) -> dict[str, list[Any]]:
    """{sample name: [(labels, value), ...]} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, (name, labels, samples.get(name))
    return float(found[0])


def test_energy_and_power_over_http_agree_with_the_sampler() -> None:
    fake = FakeMeter(30.0)
    with start_exporter(port=0, meter=fake) as exp:
        assert exp.url.startswith("http://127.0.0.1:") and exp.port > 0
        time.sleep(0.3)  # more than one 0.1 s window
        s = scrape(exp.url)
        labels = {"domain": "package-0", "meter": "fake", "measured": "true"}
        assert one(s, "nrgloops_power_watts", **labels) == pytest.approx(30.0, rel=0.02)
        assert one(s, "nrgloops_power_window_seconds") == 0.1
        assert one(s, "nrgloops_meter_info", meter="fake", measured="true") == 1.0
        assert "nrgloops_energy_joules_created" in s
        # a still counter: what the scrape shows is what the sampler holds
        fake.watts = 0.0
        time.sleep(0.05)  # the sampler's next rows
        held = exp.sampler.energy("package-0")
        s = scrape(exp.url)
        energy = one(s, "nrgloops_energy_joules_total", **labels)
        assert held > 0.3 * 30.0 * 0.9
        assert abs(energy - held) <= 1e-6  # the fake counts in floats: one unit is tiny
    with pytest.raises(OSError):
        scrape(exp.url)  # stopped: nothing listens


def test_running_loops_are_exported_and_leave_when_they_end() -> None:
    fake = FakeMeter(30.0)
    cap = nrgloops.PowerCap(20.0, meter=fake)
    knob = nrgloops.Knob(1, 4, 1)
    with start_exporter(port=0, meter=fake) as exp:
        # (30 W at every level: the controller warns that the cap is out of reach)
        with warnings.catch_warnings(), nrgloops.nrg_adapt(cap, knob=knob) as loop:
            warnings.simplefilter("ignore", RuntimeWarning)
            deadline = time.monotonic() + 0.5
            steps = 0
            while time.monotonic() < deadline:
                loop.step()
                steps += 1
                time.sleep(0.001)
            report = loop.report  # a snapshot pulls the power series: over-cap time counted
            s = scrape(exp.url)
            lab = {"loop": "adapt", "kind": "adapt", "meter": "fake", "measured": "true"}
            assert one(s, "nrgloops_loop_cap_watts", **lab) == 20.0
            # the real level (the mix's average), not the grid value of this tick
            assert one(s, "nrgloops_loop_knob_level", **lab) == knob.level
            n = one(s, "nrgloops_loop_iterations_total", variant="adapt", **lab)
            # no alternate body: the count is of steps at the bottom and still over the cap
            m = one(s, "nrgloops_loop_iterations_total", variant="over_cap_at_bottom", **lab)
            assert n + m == steps and m > 0  # 30 W over a 20 W cap
            assert 'variant="alternate"' not in s
            over = one(s, "nrgloops_loop_over_cap_seconds_total", **lab)
            assert 0 < over <= report.duration_s + 0.05  # over the cap all along (less if stalled)
            assert one(s, "nrgloops_loop_power_watts", **lab) == pytest.approx(30.0, rel=0.05)
        s = scrape(exp.url)
        assert "nrgloops_loop_cap_watts" not in s
        budget = nrgloops.EnergyBudget(1000.0, meter=fake)
        items = nrgloops.truncate(range(10), budget)
        for i in items:
            if i == 3:
                s = scrape(exp.url)
        lab = {"loop": "truncate", "kind": "truncate", "meter": "fake", "measured": "true"}
        assert one(s, "nrgloops_loop_budget_joules", **lab) == 1000.0
        assert one(s, "nrgloops_loop_iterations_total", variant="ran", **lab) >= 1
        assert not [x for x in s["nrgloops_loop_iterations_total"] if x[0]["variant"] == "left"]
        assert 0 <= one(s, "nrgloops_loop_items_left", **lab) <= 9


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="port"):
        start_exporter(port=70000, meter="model")
    with pytest.raises(TypeError, match="port"):
        start_exporter(port="9108", meter="model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="addr"):
        start_exporter(port=0, addr=5, meter="model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        start_exporter(port=0, meter="model", window=0)
    with pytest.raises(ValueError, match="unknown meter kind"):
        start_exporter(port=0, meter="bogus")
    with start_exporter(port=0, meter="model") as exp, pytest.raises(OSError, match="port="):
        start_exporter(port=exp.port, meter="model")


def test_serve_command_over_http_and_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrgloops", "serve", "--port", "0", "--meter", "model"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"serving (http://\S+/metrics)", line)
        assert found, line
        s = scrape(found.group(1))
        energy = one(s, "nrgloops_energy_joules_total", domain="package-0", measured="false")
        assert energy >= 0
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped by SIGINT" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--port", "70000"], "port"),
        (["--port", "0", "--window", "0"], "window"),
        (["--port", "0", "--addr", "192.0.2.1"], "192.0.2.1"),  # TEST-NET: not this machine
    ],
)
def test_serve_bad_input_exits_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--meter", "model", *argv]) == 2
    err = capsys.readouterr().err
    assert "error: serve:" in err and words in err
