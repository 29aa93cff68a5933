"""The NVML meter: an NVIDIA GPU's energy, *measured* by the driver.

Two ways to read it, both from C on the sampler thread (never on a loop's
path), with ``libnvidia-ml.so.1`` loaded at run time so nrgloops builds and
imports without a driver:

- ``mode="energy"``: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ, Volta and
  newer).  About 4 ms a call on an H200, and the counter moves in steps
  about every 100 ms; each reading is stamped with the estimated time of the
  counter's last step, so a window of a few steps is accurate to about one
  sampler period at each end.
- ``mode="power"``: the field ``NVML_FI_DEV_POWER_INSTANT`` (mW, about 6 us a
  call, a new value about every 100 ms), integrated over the read times.
  (``nvmlDeviceGetPowerUsage`` is a 1 s average on Ampere and newer: too slow
  to steer a loop, so it is not used.)
- ``mode="auto"`` (default): energy if the energy counter reads and moves
  within 0.25 s (a counter that never moves is not trusted), else power; if
  the energy counter is refused 20 times in a row later on, the meter moves
  to power and the total carries on.  Opening waits for one counter step
  (about 50 ms on average), which also stamps the first reading exactly.

Either way the readings move about every 100 ms, so ``resolution_s`` is 0.1
and a ``PowerCap`` on this meter widens windows shorter than three updates.

Read only: the C source looks up NVML getters alone; nothing here can change
a GPU's power limit or clocks.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, NoReturn

from nrgloops import _checks
from nrgloops._ffi import ffi, lib, raise_errno, try_new
from nrgloops.meters._base import Meter

__all__ = [
    "DEFAULT_LIBRARY",
    "ENERGY_PERIOD_S",
    "NVML_STATUS_NAMES",
    "NvmlMeter",
    "POWER_PERIOD_S",
    "RESOLUTION_S",
    "gpu_count",
    "open_nvml",
]

DEFAULT_LIBRARY = "libnvidia-ml.so.1"
RESOLUTION_S = 0.1  # both readings move about every 100 ms (H200, driver 580)
# Sampler periods.  The energy call costs ~4 ms: at 25 ms the sampler thread
# is busy ~16% of one core and a step's time is known to +-12.5 ms (4% of a
# 300 ms window at each end).  The power field costs ~6 us, so 20 ms is free
# and samples each 100 ms value about five times.
ENERGY_PERIOD_S = 0.025
POWER_PERIOD_S = 0.02

_MODES = {"auto": lib.NRG_NVML_AUTO, "energy": lib.NRG_NVML_ENERGY, "power": lib.NRG_NVML_POWER}
_MODE_NAMES = {v: k for k, v in _MODES.items()}

# nvmlReturn_t values that matter here (nvml.h).
NVML_STATUS_NAMES = {
    0: "NVML_SUCCESS",
    1: "NVML_ERROR_UNINITIALIZED",
    2: "NVML_ERROR_INVALID_ARGUMENT",
    3: "NVML_ERROR_NOT_SUPPORTED",
    4: "NVML_ERROR_NO_PERMISSION",
    6: "NVML_ERROR_NOT_FOUND",
    9: "NVML_ERROR_DRIVER_NOT_LOADED",
    10: "NVML_ERROR_TIMEOUT",
    15: "NVML_ERROR_GPU_IS_LOST",
    18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    21: "NVML_ERROR_NO_DATA",
    27: "NVML_ERROR_NOT_READY",
    28: "NVML_ERROR_GPU_NOT_FOUND",
    999: "NVML_ERROR_UNKNOWN",
}


def _status_text(status: int) -> str:
    """``NVML_ERROR_NOT_READY ("System is not in ready state")``."""
    if status == lib.NRG_NVML_COUNTER_STILL:
        return "the counter did not move in 0.25 s"
    name = NVML_STATUS_NAMES.get(status, f"nvmlReturn {status}")
    text = lib.nrg_nvml_error_string(status)
    return f'{name} ("{ffi.string(text).decode()}")' if text != ffi.NULL else name


# Where drivers put libnvidia-ml when the loader's path misses it (container
# runtimes mount it under /usr/local/nvidia; WSL under /usr/lib/wsl/lib).
_SEARCH_DIRS = (
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
)


def _library(library: str | os.PathLike[str] | None) -> str:
    if library is None:
        return os.environ.get("NRGLOOPS_NVML_LIBRARY", DEFAULT_LIBRARY)
    return _checks.path("library", library)


def _fallback_library(path: str) -> str | None:
    """An absolute path to try when the loader does not find the default name."""
    if path != DEFAULT_LIBRARY:
        return None
    for d in _SEARCH_DIRS:
        candidate = os.path.join(d, DEFAULT_LIBRARY)
        if os.path.exists(candidate):
            return candidate
    return None


def _raise_unavailable(
    code: int, library: str, index: int | None, count: int | None, mode: str = "auto"
) -> NoReturn:
    """Raise for a failed probe or open, naming the cause and the fix."""
    status = lib.nrg_nvml_open_status()
    why = _status_text(status) if status else os.strerror(-code)
    loader = ffi.string(lib.nrg_nvml_loader_error()).decode(errors="replace")
    n = "no" if not count else str(count)
    s = "" if count == 1 else "s"
    refused = (
        "GPU {index} gives neither the energy counter nor the instant power field through "
        f"NVML: {why}; this needs a Volta or newer GPU and a recent driver"
    )
    if mode != "auto":
        what, other = (
            ("energy counter", "power") if mode == "energy" else ("instant power field", "energy")
        )
        refused = (
            f"GPU {{index}} refused its {what} through NVML: {why}; "
            f"mode='auto' or mode='{other}' reads the {other} instead"
        )
    not_started = f"NVML could not start on {library}: {why}; check `nvidia-smi` on this machine"
    reasons = {
        errno.ENOENT: (
            f"no NVIDIA driver: {library} not found ({loader}); install the NVIDIA driver, "
            "or pass library= (or set NRGLOOPS_NVML_LIBRARY) to where libnvidia-ml is"
        ),
        errno.ENOSYS: f"NVML cannot be used: {loader}; update the NVIDIA driver",
        errno.ENXIO: (
            f"GPU index {index} out of range: {n} GPU{s} "
            f"(choose index 0..{max((count or 0) - 1, 0)}; CUDA_VISIBLE_DEVICES does not "
            "renumber NVML's indices)"
        ),
        errno.EOPNOTSUPP: refused.format(index=index),
        errno.EAGAIN: refused.format(index=index) if mode != "auto" else not_started,
        errno.EACCES: f"NVML refused access: {why}; check the permissions of /dev/nvidia*",
        errno.ENODEV: not_started,
        errno.EIO: not_started,
    }
    raise_errno(code, "NVML meter", reasons=reasons, unavailable=-code in reasons)


def gpu_count(library: str | os.PathLike[str] | None = None) -> tuple[int, str]:
    """How many GPUs NVML sees, and the driver version (``""`` if unknown).

    Raises MeterUnavailable where NVML cannot be loaded or started.
    """
    path = _library(library)
    count = ffi.new("unsigned int *")
    driver = ffi.new("char[96]")
    rc = lib.nrg_nvml_probe(os.fsencode(path), count, driver, 96)
    if rc == -errno.ENOENT and (fallback := _fallback_library(path)) is not None:
        path = fallback
        rc = lib.nrg_nvml_probe(os.fsencode(path), count, driver, 96)
    if rc < 0:
        _raise_unavailable(rc, path, None, None)
    return int(count[0]), ffi.string(driver).decode(errors="replace")


def _pynvml_facts(index: int) -> dict[str, Any]:
    """Extra facts from nvidia-ml-py where it is installed (getters only)."""
    try:
        import pynvml
    except ImportError:
        return {}
    facts: dict[str, Any] = {}
    try:
        pynvml.nvmlInit()
    except Exception:  # optional facts, never an error
        return {}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        facts["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return facts


class NvmlMeter(Meter):
    """A Meter on one NVIDIA GPU (domain ``gpu-N``), with NVML's own state."""

    index: int
    gpu_name: str
    driver: str
    power_limit_w: float | None

    @property
    def mode(self) -> str:
        """ "energy" or "power": how the GPU is read now (auto may move to power)."""
        return _MODE_NAMES.get(lib.nrg_nvml_mode(self._source), "unknown")

    @property
    def last_status(self) -> int:
        """The nvmlReturn_t of the last read (0: success)."""
        return int(lib.nrg_nvml_last_status(self._source))

    @property
    def last_status_text(self) -> str:
        return _status_text(self.last_status)

    def _read_failed(self, rc: int) -> NoReturn:
        # The sampler reads the same source and only counts such failures.
        raise_errno(
            rc,
            f"reading GPU {self.index} through NVML ({self.mode} mode)",
            reasons={-rc: f"{self.last_status_text}; the last good reading is kept"},
            unavailable=True,
        )


def open_nvml(
    index: int = 0,
    library: str | os.PathLike[str] | None = None,
    mode: str = "auto",
) -> NvmlMeter:
    """Open the NVML meter on GPU ``index``.

    Args:
        index: NVML's GPU index (as in ``nvidia-smi``), 0 and up.
        library: path of libnvidia-ml (default ``libnvidia-ml.so.1``, or
            NRGLOOPS_NVML_LIBRARY; where the loader misses the default name,
            the usual driver folders such as /usr/local/nvidia/lib64 are tried).
        mode: "auto" (energy counter if supported, else instant power),
            "energy" or "power"; see the module docstring.

    Raises:
        MeterUnavailable: no driver, no such GPU, or NVML refuses both
            readings; the message says which and what to do.
        ValueError / TypeError: a bad argument.
    """
    index = _checks.count("index", index, hi=2**32 - 1, what="a GPU index")
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    path = _library(library)
    rc, source = try_new(lib.nrg_nvml_new, os.fsencode(path), index, _MODES[mode])
    if rc == -errno.ENOENT and (fallback := _fallback_library(path)) is not None:
        path = fallback
        rc, source = try_new(lib.nrg_nvml_new, os.fsencode(path), index, _MODES[mode])
    if rc < 0:
        # Only now count the GPUs, for the message (the status is not needed then).
        count = gpu_count(path)[0] if rc == -errno.ENXIO else None
        _raise_unavailable(rc, path, index, count, mode)
    energy_refused = lib.nrg_nvml_open_status() if mode == "auto" else 0
    # NVML is up while the source holds it: this probe costs no second init.
    driver = gpu_count(path)[1]
    name_buf = ffi.new("char[96]")
    lib.nrg_nvml_name(source, name_buf, 96)
    name = ffi.string(name_buf).decode(errors="replace") or "NVIDIA GPU"
    used = _MODE_NAMES[lib.nrg_nvml_mode(source)]
    if used == "energy":
        how = "energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ)"
        period = ENERGY_PERIOD_S
    else:
        how = "instant power (NVML_FI_DEV_POWER_INSTANT, mW) integrated over time"
        if energy_refused:
            how += f"; the energy counter was refused: {_status_text(energy_refused)}"
        period = POWER_PERIOD_S
    facts = _pynvml_facts(index) if library is None else {}
    meter = NvmlMeter(
        source,
        kind="nvml",
        measured=True,
        domains=(f"gpu-{index}",),
        resolution_s=RESOLUTION_S,
        default_period=period,
        description=(
            f"{name} (GPU {index}, driver {driver or 'unknown'}) measured through NVML: {how}; "
            f"new values about every {RESOLUTION_S * 1000:.0f} ms"
        ),
    )
    meter.index = index
    meter.gpu_name = name
    meter.driver = driver
    meter.power_limit_w = facts.get("power_limit_w")
    return meter
