"""The cgroup governor, for real where this machine lets it (root, cgroup v1
or v2), on a fake v2 parent otherwise; the workload's child; its arguments."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nrgloops._errors import NrgError
from nrgloops.governors import (
    CgroupGovernor,
    GovernorBusy,
    GovernorUnavailable,
    Journal,
    PowercapGovernor,
    _cgroupfs,
    open_governor,
    restore,
)
from nrgloops.governors.cgroup import read_exact
from nrgloops.sampler import Sampler
from nrgloops.testing import FakeMeter
from tests.cgroups import nrgloops_cgroups
from tests.fakes.powercap_tree import server
from tests.governor_helpers import REPO

# ---------------------------------------------------------------------------
# cgroup, for real (root here)


def _cgroup_ok() -> str | None:
    try:
        CgroupGovernor().check()
    except (GovernorUnavailable, OSError) as exc:
        return str(exc)
    return None


needs_cgroup = pytest.mark.skipif(_cgroup_ok() is not None, reason=f"{_cgroup_ok()}")


def _my_cgroup() -> tuple[str, float]:
    with open("/proc/self/cgroup") as f:
        lines = f.read()
    # burn a little CPU so the feedback loop runs a few steps
    t = time.monotonic()
    x = 0
    while time.monotonic() - t < 0.4:
        x += 1
    return lines, float(x)


@needs_cgroup
def test_cgroup_runs_child_in_fresh_group_and_removes_it(tmp_path: Path) -> None:
    before = nrgloops_cgroups()
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05)
    meter = FakeMeter(watts=30.0)
    with Sampler(meter) as s:
        trace = gov.run(10.0, _my_cgroup, lambda: s.power(0.05))
        lines, _ = trace.result
    assert f"nrgloops-{os.getpid()}-" in lines  # the child ran inside the group
    assert nrgloops_cgroups() == before
    assert not list((tmp_path / "j").glob("*.json"))
    # power (30 W) stayed over the cap (10 W): the quota went to its floor
    assert trace.setting == "quota_cpus"
    assert trace.settings and trace.settings[-1] == CgroupGovernor.MIN_CPUS
    assert trace.power_w and set(trace.power_w) == {30.0}


@needs_cgroup
def test_cgroup_quota_rises_under_the_cap(tmp_path: Path) -> None:
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05, watts_per_cpu=8, idle_w=5)
    with Sampler(FakeMeter(watts=6.0)) as s:
        q = gov.run(15.0, _my_cgroup, lambda: s.power(0.05)).settings
    assert q[-1] == gov.cpus and q[0] <= q[-1]  # from (15-5)/8 CPUs up to no quota


def _fails() -> None:
    raise KeyError("inside the child")


@needs_cgroup
def test_cgroup_workload_error_is_reported_and_cleaned(tmp_path: Path) -> None:
    before = nrgloops_cgroups()
    gov = CgroupGovernor(journal=tmp_path / "j")
    with Sampler(FakeMeter(watts=5.0)) as s, pytest.raises(NrgError, match="KeyError"):
        gov.run(10.0, _fails, lambda: s.power(0.1))
    assert nrgloops_cgroups() == before
    assert not list((tmp_path / "j").glob("*.json"))


_CG_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nrgloops.governors import CgroupGovernor
    from nrgloops.sampler import Sampler
    from nrgloops.testing import FakeMeter
    def work():
        while True:
            pass
    gov = CgroupGovernor(journal=sys.argv[1])
    with Sampler(FakeMeter(watts=5.0)) as s:
        import threading
        threading.Timer(0.3, lambda: print("ready", flush=True)).start()
        gov.run(10.0, work, lambda: s.power(0.1))
    """
)


def _start_cg_holder(journal: Path) -> subprocess.Popen[str]:
    """A child Python holding a cgroup run open; returns once it says ready."""
    p = subprocess.Popen(
        [sys.executable, "-c", _CG_HOLDER, str(journal)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


@needs_cgroup
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cgroup_cleaned_on_signal(tmp_path: Path, sig: int) -> None:
    p = _start_cg_holder(tmp_path / "j")
    assert len(nrgloops_cgroups(p.pid)) == 1
    p.send_signal(sig)
    p.wait(timeout=20)
    assert not nrgloops_cgroups(p.pid)
    assert not list((tmp_path / "j").glob("*.json"))


@needs_cgroup
def test_restore_removes_a_left_cgroup_and_its_processes(tmp_path: Path) -> None:
    p = _start_cg_holder(tmp_path / "j")
    (left,) = nrgloops_cgroups(p.pid)
    p.kill()  # the run dies; its child dies with it (PR_SET_PDEATHSIG) but the group stays
    p.wait(timeout=10)
    assert nrgloops_cgroups(p.pid) == {left}
    result = restore(tmp_path / "j", trees=_cgroupfs_trees())
    assert not result.errors, result.errors
    assert any("removed cgroup" in line for line in result.undone)
    assert not nrgloops_cgroups(p.pid)


def test_open_governor(tmp_path: Path) -> None:
    assert open_governor("none")[0] is None
    with pytest.raises(ValueError, match="governor must be one of"):
        open_governor("rapl")
    with pytest.raises(GovernorUnavailable, match="does not exist"):
        open_governor("powercap", powercap_root=str(tmp_path / "nope"))
    tree = server(tmp_path / "sys", packages=1)
    gov, why = open_governor("auto", powercap_root=str(tree.root))
    assert isinstance(gov, PowercapGovernor) and why.startswith("powercap")
    gov, why = open_governor("auto", powercap_root=str(tmp_path / "nope"))
    if _cgroup_ok() is None:
        assert isinstance(gov, CgroupGovernor)
        assert "powercap refused" in why
    else:
        assert gov is None and "no governor" in why


def _cgroupfs_trees() -> list[Path]:
    return [where for _, where, _ in _cgroupfs.cgroup_mounts()]


def test_find_cgroup_parses_mounts(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset io memory pids\n")  # no cpu: hybrid
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"cgroup2 {v2} cgroup2 rw,nosuid 0 0\n"
        f"cgroup {tmp_path}/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
        f"cgroup {tmp_path}/memory cgroup rw,memory 0 0\n"
    )
    assert _cgroupfs.find_cgroup(str(mounts)) == (1, tmp_path / "cpu,cpuacct")
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")  # pure v2
    assert _cgroupfs.find_cgroup(str(mounts)) == (2, v2)
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(GovernorUnavailable, match="no cgroup hierarchy"):
        _cgroupfs.find_cgroup(str(mounts))


def test_quota_files_format(tmp_path: Path) -> None:
    gov = CgroupGovernor(period_us=20_000)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    write2 = gov._quota_writer(2, tmp_path)
    write2(0.5)
    assert (tmp_path / "cpu.max").read_text() == "10000 20000\n"
    write2(gov.cpus)
    assert (tmp_path / "cpu.max").read_text() == "max 20000\n"
    write1 = gov._quota_writer(1, tmp_path)
    write1(0.01)  # the kernel's least quota is 1 ms
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "1000\n"
    write1(gov.cpus)
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "-1\n"


def _full_disk(self: Journal, key: int) -> None:
    raise NrgError("cannot write the governor journal: No space left on device")


def test_cgroup_undo_goes_on_when_the_journal_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")  # a fake v2 parent
    gov = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    with (
        pytest.raises(NrgError, match="stale") as info,
        gov._group(Journal(tmp_path / "j")) as (_, group),
    ):
        assert group.is_dir()
        assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu\n"
        monkeypatch.setattr(Journal, "drop", _full_disk)
    assert not group.exists()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "-cpu\n"  # undone too
    assert "could not undo" not in str(info.value)


def test_cgroup_undo_goes_on_when_the_group_cannot_be_removed(tmp_path: Path) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    gov = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    with pytest.raises(NrgError) as info, gov._group(Journal(tmp_path / "j")) as (_, group):
        (group / "stuck").write_text("")  # rmdir: Directory not empty
    assert (tmp_path / "cgroup.subtree_control").read_text() == "-cpu\n"  # undone anyway
    assert f"could not undo cgroup {group}" in str(info.value)
    assert "undone: cpu controller" in str(info.value)
    (journal,) = (tmp_path / "j").glob("*.json")
    assert [c["op"] for c in json.loads(journal.read_text())["changes"]] == ["cgroup"]


def test_journal_add_failure_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "ro").write_text("")  # a file where the directory should be
    j = Journal(tmp_path / "ro")
    with pytest.raises(NrgError, match="NRGLOOPS_JOURNAL_DIR"):
        j.add({"op": "write", "path": "x", "old": "1"})
    assert j.entries == []


# ---------------------------------------------------------------------------
# the workload child


def _thread_names() -> list[str]:
    time.sleep(0.05)  # time for a sampler thread started by fork() to name itself
    return [p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")]


def test_workload_child_has_no_sampler_thread() -> None:
    with Sampler(FakeMeter(watts=5.0), period=0.001):
        assert "nrg-sampler" in _thread_names()
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(go_w)
                os.close(res_r)
                CgroupGovernor._child(go_r, res_w, _thread_names)
            finally:
                os._exit(99)
        os.close(go_r)
        os.close(res_w)
        os.write(go_w, b"g")
        size = struct.unpack("<Q", read_exact(res_r, 8))[0]
        body = read_exact(res_r, size)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(res_r)
    status, names = pickle.loads(body)
    assert status == "ok" and names
    assert "nrg-sampler" not in names


@needs_cgroup
def test_cgroup_workload_runs_without_sampler_thread(tmp_path: Path) -> None:
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05)
    with Sampler(FakeMeter(watts=5.0), period=0.001) as s:
        names = gov.run(10.0, _thread_names, lambda: s.power(0.05)).result
    assert names and "nrg-sampler" not in names


# ---------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"control_period": -1}, ValueError, r"control_period .*seconds > 0"),
        ({"control_period": 0}, ValueError, "control_period"),
        ({"control_period": float("nan")}, ValueError, "control_period"),
        ({"control_period": float("inf")}, ValueError, "control_period"),
        ({"control_period": "1"}, TypeError, "control_period"),
        ({"watts_per_cpu": 0}, ValueError, r"watts_per_cpu .*watts > 0"),
        ({"watts_per_cpu": -8}, ValueError, "watts_per_cpu"),
        ({"watts_per_cpu": float("inf")}, ValueError, "watts_per_cpu"),
        ({"watts_per_cpu": True}, TypeError, "watts_per_cpu"),
        ({"idle_w": float("nan")}, ValueError, r"idle_w .*watts >= 0"),
        ({"idle_w": -1}, ValueError, "idle_w"),
        ({"idle_w": "5"}, TypeError, "idle_w"),
        ({"period_us": "x"}, TypeError, r"period_us must be an int number of µs"),
        ({"period_us": 2000.7}, TypeError, "period_us"),
        ({"period_us": 20000.0}, TypeError, "period_us"),
        ({"period_us": True}, TypeError, "period_us"),
        ({"period_us": 999}, ValueError, r"period_us .*\[1000, 1000000\]"),
        ({"period_us": 1_000_001}, ValueError, "period_us"),
        ({"gain": float("nan")}, ValueError, r"gain .*\(0, 1\]"),
        ({"gain": 0}, ValueError, "gain"),
        ({"gain": 1.5}, ValueError, "gain"),
        ({"gain": None}, TypeError, "gain"),
        ({"cgroup": (3, "/sys/fs/cgroup")}, ValueError, "cgroup must be"),
        ({"cgroup": "/sys/fs/cgroup"}, ValueError, "cgroup must be"),
    ],
)
def test_cgroup_governor_rejects_bad_arguments(
    kwargs: dict[str, object], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        CgroupGovernor(**kwargs)  # type: ignore[arg-type]


def test_cgroup_governor_accepts_edges() -> None:
    gov = CgroupGovernor(period_us=1000, control_period=0.01, gain=1, watts_per_cpu=2, idle_w=0)
    assert (gov.period_us, gov.control_period, gov.gain, gov.idle_w) == (1000, 0.01, 1.0, 0.0)
    assert CgroupGovernor(period_us=1_000_000).period_us == 1_000_000


def test_run_and_open_governor_reject_bad_arguments(tmp_path: Path) -> None:
    gov = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    with pytest.raises(
        TypeError, match="power must be a callable returning watts.*cgroup governor needs"
    ):
        gov.run(10.0, lambda: 1, None)
    with pytest.raises(TypeError, match="cap_w"):
        gov.run("10", lambda: 1, lambda: 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="governor must be one of"):
        open_governor(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# overlapping runs on one v2 parent: the run that enabled the cpu controller
# owns it; runs that found it enabled share it and never disable it


def test_the_run_that_enabled_cpu_owns_the_parent(tmp_path: Path) -> None:
    sub = tmp_path / "cgroup.subtree_control"
    sub.write_text("memory\n")
    a = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    b = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    with a._group(Journal(tmp_path / "j")):
        assert sub.read_text() == "+cpu\n"
        busy = pytest.raises(GovernorBusy, match="enabled the cpu controller")
        with busy, b._group(Journal(tmp_path / "j")):
            pass
        assert sub.read_text() == "+cpu\n"  # b changed nothing
    assert sub.read_text() == "-cpu\n"
    assert not list((tmp_path / "j").glob("*.json"))


def test_runs_that_found_cpu_enabled_share_the_parent(tmp_path: Path) -> None:
    sub = tmp_path / "cgroup.subtree_control"
    sub.write_text("cpu memory\n")  # the fake file keeps what was written last
    a = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    b = CgroupGovernor(cgroup=(2, tmp_path), journal=tmp_path / "j")
    with a._group(Journal(tmp_path / "j")) as (_, ga), b._group(Journal(tmp_path / "j")) as (_, gb):
        assert ga != gb and ga.is_dir() and gb.is_dir()
    assert sub.read_text() == "cpu memory\n"  # neither touched it
    assert not ga.exists() and not gb.exists()


@needs_cgroup
def test_an_unknown_power_holds_the_quota(tmp_path: Path) -> None:
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05, watts_per_cpu=8, idle_w=5)
    trace = gov.run(15.0, _my_cgroup, lambda: math.nan)
    assert trace.settings and set(trace.settings) == {min(float(gov.cpus), 10 / 8)}
    assert all(math.isnan(w) for w in trace.power_w)


def test_with_model_builds_a_new_governor() -> None:
    gov = CgroupGovernor(period_us=10_000, control_period=0.3, gain=0.5)
    hinted = gov.with_model(idle_w=4.0, watts_per_cpu=6.0)
    assert hinted is not gov and (hinted.idle_w, hinted.watts_per_cpu) == (4.0, 6.0)
    assert (hinted.period_us, hinted.control_period, hinted.gain) == (10_000, 0.3, 0.5)
    assert gov.idle_w is None  # the original is left as it was
    with pytest.raises(ValueError, match="idle_w"):
        gov.with_model(idle_w=-1.0, watts_per_cpu=6.0)
    pc = PowercapGovernor("/nonexistent")
    assert pc.with_model(idle_w=4.0, watts_per_cpu=6.0) is pc  # the firmware has its own
