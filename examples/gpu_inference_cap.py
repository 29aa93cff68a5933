"""A GPU inference service that holds a soft power cap from inside its own loop.

Requests arrive at a steady rate, in batches.  Each batch is served by the
full model (8 Linear+GELU layers of 4096x4096, bf16) or by an early exit (its
first 2 layers).  Under a fixed load the variant is a real power knob on a GPU
(docs/hardware.md: at 1.2 M requests/s on an H200, 8 layers draw 459 W, 2
layers 209 W), so a cap between the two is held by mixing them, batch by
batch: ``nrg_adapt`` on the full model, ``nrg_alternate`` for the early exit,
and the library sets the share of full-model batches from the measured power
(a mixed level with a learned power model; see ``nrgloops.Knob``).

Why a mix and not "full while under the cap, early exit while over": NVML's
readings move every 100 ms, so that bare switch runs whole 100 ms stretches of
one variant and the power swings between the two variants' levels
(benchmarks/gpu_cap.py measures both).  Nothing here changes the GPU's
settings: NVML is only read.

Without a GPU it runs on the CPU with tiny sizes and the model meter, whose
power is ESTIMATED from CPU time: a smoke test of the code, not a measurement.

    python examples/gpu_inference_cap.py --cap 300 --rate 1.2e6 --seconds 20
    python examples/gpu_inference_cap.py            # cap: midway between the variants
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

import nrgloops

torch: Any
try:  # typed Any whether or not torch is installed where mypy runs
    torch = importlib.import_module("torch")
except ImportError:  # said clearly in main()
    torch = None


class Model:
    """The model and its early exit, on one batch that stays on the device."""

    def __init__(self, cuda: bool, width: int, layers: int, cheap_layers: int, batch: int) -> None:
        torch.manual_seed(0)
        device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
        self.layers = torch.nn.Sequential(
            *(
                torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())
                for _ in range(layers)
            )
        ).to(device=device, dtype=dtype)
        self.early_exit = self.layers[:cheap_layers]
        self.x = torch.randn(batch, width, device=device, dtype=dtype)
        self.batch, self.cuda = batch, cuda

    def full(self) -> bool:
        with torch.inference_mode():
            self.layers(self.x)
        return True

    def cheap(self) -> bool:
        with torch.inference_mode():
            self.early_exit(self.x)
        return False

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def serve_stream(
    model: Model, serve: Callable[[], bool], rate: float, seconds: float, deadline_s: float
) -> dict[str, int]:
    """Batch k arrives at t0 + k * batch / rate; a batch served (and finished)
    within ``deadline_s`` of its arrival is on time, one waiting longer is dropped."""
    interval = model.batch / rate
    counts = {"arrived": 0, "on_time": 0, "late": 0, "dropped": 0, "full": 0}
    t0 = time.monotonic()
    while (now := time.monotonic()) < t0 + seconds:
        arrival = t0 + counts["arrived"] * interval
        if arrival > now:
            time.sleep(arrival - now)
            continue
        counts["arrived"] += 1
        if now - arrival > deadline_s:
            counts["dropped"] += 1
            continue
        counts["full"] += serve()
        model.sync()  # done now: simple latency accounting for an example
        counts["on_time" if time.monotonic() - arrival <= deadline_s else "late"] += 1
    return counts


def under_cap(model: Model, cap: nrgloops.PowerCap) -> nrgloops.AdaptedFunction[[], bool]:
    """The NRG-loop: the full model under the cap, the early exit as its
    alternate; the library mixes the two, batch by batch, to hold the cap."""

    @nrgloops.nrg_adapt(cap)
    def serve() -> bool:
        return model.full()

    @nrgloops.nrg_alternate(serve)
    def early_exit() -> bool:
        return model.cheap()

    return serve


def calibrate(model: Model, meter: nrgloops.Meter, rate: float, seconds: float) -> dict[str, float]:
    """The power of each variant alone at the rate, W (as the meter sees it)."""
    out = {}
    with nrgloops.Sampler(meter) as s:
        for name, serve in (("full", model.full), ("early exit", model.cheap)):
            serve_stream(model, serve, rate, seconds, deadline_s=1.0)
            out[name] = s.power(window=min(seconds, 1.0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=float, help="soft power cap, W (default: between the variants)")
    p.add_argument("--rate", type=float, help="requests/s (default 1.2e6 on a GPU, 12800 on CPU)")
    p.add_argument("--seconds", type=float, help="how long to serve (default 20 s GPU, 3 s CPU)")
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch", type=int, help="requests a batch (default 1024 GPU, 64 CPU)")
    args = p.parse_args(argv)
    if torch is None:
        print("this example needs PyTorch: pip install torch", file=sys.stderr)
        return 2
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not cuda:
        torch.set_num_threads(1)  # one core: the model meter's estimate stays readable
        print(
            "NOTE: no CUDA GPU here: running on the CPU with tiny sizes and the model meter.\n"
            "      Every power figure below is ESTIMATED from CPU time; this is a smoke "
            "test of the code path, not a GPU measurement."
        )
    model = Model(cuda, 4096 if cuda else 256, 8, 2, args.batch or (1024 if cuda else 64))
    rate = args.rate or (1.2e6 if cuda else 12800.0)
    seconds = args.seconds or (20.0 if cuda else 3.0)
    meter = nrgloops.open_meter("nvml") if cuda else nrgloops.open_meter("model", scope="process")
    label = meter.label
    print(f"meter: {meter.kind} ({label}): {meter.description}")
    cap_w = args.cap
    if cap_w is None:
        cal = calibrate(model, meter, rate, 2.0 if cuda else 1.0)
        cap_w = (cal["full"] + cal["early exit"]) / 2
        print(f"calibration ({label}): " + ", ".join(f"{k} {w:.1f} W" for k, w in cal.items()))
    cap = nrgloops.PowerCap(cap_w, window=max(0.3, 3 * meter.resolution_s), meter=meter)
    serve = under_cap(model, cap)
    n = serve_stream(model, serve, rate, seconds, args.deadline_ms / 1e3)
    serve.close()
    r = serve.report
    b = model.batch
    print(f"\nserved {seconds:g} s at {rate:.4g} requests/s under a {cap_w:.1f} W cap ({label}):")
    print(
        f"  requests served on time: {n['on_time'] * b} of {n['arrived'] * b} "
        f"({100 * n['on_time'] / max(n['arrived'], 1):.1f}%); dropped {n['dropped'] * b}"
    )
    served = n["on_time"] + n["late"]
    print(f"  share served by the full model: {100 * n['full'] / max(served, 1):.1f}% of batches")
    print(f"  energy per request: {r.energy_j / max(served * b, 1):.3e} J ({label})")
    print(f"  average power: {r.avg_power_w:.1f} W ({label})")
    print(f"  peak windowed power: {r.peak_power_w:.1f} W over {r.window_s:g} s windows ({label})")
    print(f"  share of time over the cap: {100 * (r.over_cap_fraction or 0):.1f}% ({label})")
    print("\nthe loop's own report:\n" + str(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
