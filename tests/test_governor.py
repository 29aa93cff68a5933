"""Governors restore exactly what they changed: fake powercap trees, a real cgroup."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nrgloops import governor as gv
from nrgloops.governor import (
    CgroupGovernor,
    GovernorUnavailable,
    Journal,
    PowercapGovernor,
    open_governor,
    restore,
)
from nrgloops.sampler import Sampler
from nrgloops.testing import FakeMeter
from tests.fakes.powercap_tree import client, server

REPO = Path(__file__).resolve().parents[1]


def limits(root: Path) -> dict[str, str]:
    """Every constraint limit and enabled flag of every zone (the whole state)."""
    out = {}
    for zone in sorted(os.listdir(root)):
        d = root / zone
        for f in sorted(os.listdir(d)):
            if f.endswith("power_limit_uw") or f == "enabled":
                out[f"{zone}/{f}"] = (d / f).read_text().strip()
    return out


# ---------------------------------------------------------------------------
# powercap on fake trees


def test_powercap_sets_pl1_of_each_package_and_restores(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    gov.check()
    with gov.applied(30.0) as held:
        assert [uw for _, uw in held] == [15_000_000, 15_000_000]
        now = limits(tree.root)
        assert now["intel-rapl:0/constraint_0_power_limit_uw"] == "15000000"
        assert now["intel-rapl:1/constraint_0_power_limit_uw"] == "15000000"
        # PL2, the dram subzones and everything else untouched
        changed = {k for k in now if now[k] != before[k]}
        assert changed == {
            "intel-rapl:0/constraint_0_power_limit_uw",
            "intel-rapl:1/constraint_0_power_limit_uw",
        }
        journals = list((tmp_path / "j").glob("*.json"))
        assert len(journals) == 1
        doc = json.loads(journals[0].read_text())
        assert {c["old"] for c in doc["changes"]} == {"28000000"}
    assert limits(tree.root) == before
    assert not list((tmp_path / "j").glob("*.json"))


def test_powercap_skips_psys_and_mmio(tmp_path: Path) -> None:
    tree = client(tmp_path / "sys")
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    assert [z.name for z in gov.zones()] == ["package-0"]
    before = limits(tree.root)
    with gov.applied(12.5):
        assert (tree.paths["intel-rapl:0"] / "constraint_0_power_limit_uw").read_text() == (
            "12500000\n"
        )
        assert (tree.paths["intel-rapl:1"] / "constraint_0_power_limit_uw").read_text() == (
            "28000000\n"
        )
    assert limits(tree.root) == before


def test_powercap_enables_a_disabled_zone_and_restores_it(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)
    (tree.paths["intel-rapl:0"] / "enabled").write_text("0\n")
    before = limits(tree.root)
    with PowercapGovernor(tree.root, journal=tmp_path / "j").applied(20):
        assert (tree.paths["intel-rapl:0"] / "enabled").read_text() == "1\n"
    assert limits(tree.root) == before


def test_powercap_restores_on_exception(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    with pytest.raises(RuntimeError, match="boom"), gov.applied(30):
        raise RuntimeError("boom")
    assert limits(tree.root) == before
    with pytest.raises(RuntimeError, match="boom"):
        gov.run(30, lambda: (_ for _ in ()).throw(RuntimeError("boom")), None, 0.1)  # type: ignore[arg-type]
    assert limits(tree.root) == before
    assert gov.run(30, lambda: 42, None, 0.1) == 42  # type: ignore[arg-type]
    assert not list((tmp_path / "j").glob("*.json"))


def test_powercap_bios_locked_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Package 1's limit is locked: the write fails with EACCES even for root.
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    locked = str(tree.root / "intel-rapl:1" / "constraint_0_power_limit_uw")
    real = gv._write_text

    def write(path: str | os.PathLike[str], text: str) -> None:
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        real(path, text)

    monkeypatch.setattr(gv, "_write_text", write)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    with pytest.raises(GovernorUnavailable, match="BIOS locked") as info, gov.applied(30):
        pass
    assert "--governor cgroup" in str(info.value)
    assert limits(tree.root) == before  # package 0, already written, was put back
    assert not list((tmp_path / "j").glob("*.json"))


def test_powercap_unavailable(tmp_path: Path) -> None:
    with pytest.raises(GovernorUnavailable, match="does not exist"):
        PowercapGovernor(tmp_path / "nope").check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(GovernorUnavailable, match="no RAPL package zone"):
        PowercapGovernor(tmp_path / "empty").check()
    tree = server(tmp_path / "sys", packages=1)
    with pytest.raises(ValueError, match="cap_w"), PowercapGovernor(tree.root).applied(-3):
        pass
    with pytest.raises(ValueError, match="cap_w"), PowercapGovernor(tree.root).applied(
        float("nan")
    ):
        pass


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nrgloops.governor import PowercapGovernor
    gov = PowercapGovernor(sys.argv[1], journal=sys.argv[2])
    with gov.applied(float(sys.argv[3])):
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _holder(tree_root: Path, journal: Path, cap: float) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tree_root), str(journal), str(cap)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_powercap_restores_on_signal(tmp_path: Path, sig: int) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = _holder(tree.root, tmp_path / "j", 30)
    assert limits(tree.root) != before
    p.send_signal(sig)
    p.wait(timeout=20)
    assert p.returncode != 0
    assert limits(tree.root) == before
    assert not list((tmp_path / "j").glob("*.json"))


def test_restore_after_sigkill(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = _holder(tree.root, tmp_path / "j", 40)
    # While the run lives, restore leaves its changes to it.
    result = restore(tmp_path / "j")
    assert result.skipped and not result.undone
    assert limits(tree.root) != before
    p.kill()
    p.wait(timeout=10)
    assert limits(tree.root) != before  # SIGKILL: nothing could run
    result = restore(tmp_path / "j")
    assert len(result.undone) == 2 and not result.errors
    assert limits(tree.root) == before
    assert not list((tmp_path / "j").glob("*.json"))
    assert restore(tmp_path / "j").undone == []  # idempotent


def test_restore_keeps_failed_entries(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.add({"op": "write", "path": str(tmp_path / "missing" / "file"), "old": "1"})
    doc = json.loads(j.path.read_text())
    doc["pid"] = 999_999_999  # a run that is gone
    j.path.write_text(json.dumps(doc))
    result = restore(tmp_path / "j")
    assert result.errors and not result.undone
    assert j.path.exists()  # kept, so the user can see what is left


def test_journal_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NRGLOOPS_JOURNAL_DIR", str(tmp_path))
    assert gv.journal_dir() == tmp_path
    monkeypatch.delenv("NRGLOOPS_JOURNAL_DIR")
    if os.geteuid() == 0:
        assert gv.journal_dir() == Path("/run/nrgloops")


# ---------------------------------------------------------------------------
# cgroup, for real (root here)


def _cgroup_ok() -> str | None:
    try:
        CgroupGovernor().check()
    except (GovernorUnavailable, OSError) as exc:
        return str(exc)
    return None


needs_cgroup = pytest.mark.skipif(_cgroup_ok() is not None, reason=f"{_cgroup_ok()}")


def _groups() -> set[str]:
    _, parent = CgroupGovernor().where()
    return {p for p in os.listdir(parent) if p.startswith("nrgloops-")}


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
    before = _groups()
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05)
    meter = FakeMeter(watts=30.0)
    with Sampler(meter) as s:
        lines, _ = gov.run(10.0, _my_cgroup, s, 0.05)
    assert f"nrgloops-{os.getpid()}-" in lines  # the child ran inside the group
    assert _groups() == before
    assert not list((tmp_path / "j").glob("*.json"))
    # power (30 W) stayed over the cap (10 W): the quota went to its floor
    assert gov.trace.quota_cpus and gov.trace.quota_cpus[-1] == CgroupGovernor.MIN_CPUS


@needs_cgroup
def test_cgroup_quota_rises_under_the_cap(tmp_path: Path) -> None:
    gov = CgroupGovernor(journal=tmp_path / "j", control_period=0.05, watts_per_cpu=8, idle_w=5)
    with Sampler(FakeMeter(watts=6.0)) as s:
        gov.run(15.0, _my_cgroup, s, 0.05)
    q = gov.trace.quota_cpus
    assert q[-1] == gov.cpus and q[0] <= q[-1]  # from (15-5)/8 CPUs up to no quota


def _fails() -> None:
    raise KeyError("inside the child")


@needs_cgroup
def test_cgroup_workload_error_is_reported_and_cleaned(tmp_path: Path) -> None:
    before = _groups()
    gov = CgroupGovernor(journal=tmp_path / "j")
    with Sampler(FakeMeter(watts=5.0)) as s, pytest.raises(gv.NrgError, match="KeyError"):
        gov.run(10.0, _fails, s, 0.1)
    assert _groups() == before
    assert not list((tmp_path / "j").glob("*.json"))


_CG_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nrgloops.governor import CgroupGovernor
    from nrgloops.sampler import Sampler
    from nrgloops.testing import FakeMeter
    def work():
        while True:
            pass
    gov = CgroupGovernor(journal=sys.argv[1])
    with Sampler(FakeMeter(watts=5.0)) as s:
        import threading
        threading.Timer(0.3, lambda: print("ready", flush=True)).start()
        gov.run(10.0, work, s, 0.1)
    """
)


@needs_cgroup
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cgroup_cleaned_on_signal(tmp_path: Path, sig: int) -> None:
    before = _groups()
    p = subprocess.Popen(
        [sys.executable, "-c", _CG_HOLDER, str(tmp_path / "j")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    assert len(_groups() - before) == 1
    p.send_signal(sig)
    p.wait(timeout=20)
    assert _groups() == before
    assert not list((tmp_path / "j").glob("*.json"))


@needs_cgroup
def test_restore_removes_a_left_cgroup_and_its_processes(tmp_path: Path) -> None:
    before = _groups()
    p = subprocess.Popen(
        [sys.executable, "-c", _CG_HOLDER, str(tmp_path / "j")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    (left,) = _groups() - before
    p.kill()  # the run dies; its child dies with it (PR_SET_PDEATHSIG) but the group stays
    p.wait(timeout=10)
    assert left in _groups()
    result = restore(tmp_path / "j")
    assert not result.errors, result.errors
    assert any("removed cgroup" in line for line in result.undone)
    assert _groups() == before


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
    assert gv._find_cgroup(str(mounts)) == (1, tmp_path / "cpu,cpuacct")
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")  # pure v2
    assert gv._find_cgroup(str(mounts)) == (2, v2)
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(GovernorUnavailable, match="no cgroup hierarchy"):
        gv._find_cgroup(str(mounts))


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
