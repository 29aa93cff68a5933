"""A real Prometheus server scrapes ``nrgloops serve``; its query API must give back the metrics.

    python scripts/prometheus_check.py        # needs `prometheus` on PATH (Debian: apt-get
                                              # install prometheus) and nrgloops[prometheus]

It starts ``nrgloops serve`` on a free port and Prometheus (scraping it every
second, its data in a temporary directory), waits for several scrapes, then
asks Prometheus for ``up``, the energy counter and its rate, and the power
gauge: the scrape must be up, every series must carry its ``measured`` label,
the counter must grow, and its rate (J/s over the last scrapes) must agree
with the windowed power within the noise of a busy machine.  Prints what it
saw; exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

SCRAPES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        raise RuntimeError(f"{expr}: {doc}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus_check: no `prometheus` on PATH (Debian: apt-get install prometheus)")
        return 1
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    print("prometheus_check:", (version.stdout or version.stderr).splitlines()[0])
    exporter_port, prom_port = free_port(), free_port()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nrgloops-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: nrgloops\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{exporter_port}']\n"
        )
        exporter = subprocess.Popen(
            [sys.executable, "-m", "nrgloops", "serve", "--port", str(exporter_port)]
            + ["--meter", "model"]
        )
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data"]
            + [f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{prom_port}"
        try:
            wait_http(f"http://127.0.0.1:{exporter_port}/metrics", 30)
            wait_http(f"{base}/-/ready", 60)
            # Prometheus' first scrape comes a few seconds after it is ready:
            # wait for SCRAPES of them
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                n = query(base, "count_over_time(nrgloops_energy_joules_total[1m])")
                if n and int(n[0]["value"][1]) >= SCRAPES:
                    break
                time.sleep(0.5)
            up = query(base, 'up{job="nrgloops"}')
            energy = query(base, "nrgloops_energy_joules_total")
            raw = query(base, "nrgloops_energy_joules_total[1m]")
            power = query(base, "avg_over_time(nrgloops_power_watts[1m])")
            info = query(base, "nrgloops_meter_info")
        finally:
            for p in (prom, exporter):
                p.terminate()
            for p in (prom, exporter):
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(f"  up: {[u['value'][1] for u in up]}")
    for e in energy:
        m = e["metric"]
        print(
            f"  nrgloops_energy_joules_total{{domain={m.get('domain')}, meter={m.get('meter')}, "
            f"measured={m.get('measured')}}} = {float(e['value'][1]):.3f} J"
        )
    if not up or up[0]["value"][1] != "1":
        failures.append("the exporter was not up for Prometheus")
    if not energy or any(e["metric"].get("measured") not in ("true", "false") for e in energy):
        failures.append("no energy series with a measured label")
    values = [(float(t), float(v)) for t, v in raw[0]["values"]] if raw else []
    print(f"  {len(values)} scrapes stored")
    if len(values) < SCRAPES:
        failures.append(f"fewer than {SCRAPES} scrapes stored")
    elif any(b[1] < a[1] for a, b in zip(values, values[1:], strict=False)):
        failures.append("the energy counter went down between scrapes")
    elif values[-1][1] <= values[0][1]:
        failures.append("the energy counter did not grow between scrapes")
    elif power:
        (t0, e0), (t1, e1) = values[0], values[-1]
        r, p = (e1 - e0) / (t1 - t0), float(power[0]["value"][1])
        print(
            f"  energy growth over the scrapes: {r:.2f} W; nrgloops_power_watts averaged "
            f"over them: {p:.2f} W (estimated)"
        )
        # loose: the power gauge is a 0.1 s window at each scrape, and the
        # machine's load changes between them
        if not (0.5 * p <= r <= 2.0 * p):
            failures.append(f"the energy rate {r:.2f} W and the power gauge {p:.2f} W disagree")
    else:
        failures.append("no power series")
    if not info:
        failures.append("no nrgloops_meter_info")
    for f in failures:
        print(f"  FAILED: {f}")
    print("prometheus_check:", "ok" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
