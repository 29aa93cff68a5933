"""Governors restore exactly what they changed: fake powercap trees, a real cgroup."""

from __future__ import annotations

import errno
import json
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

from nrgloops import governor as gv
from nrgloops._errors import NrgError
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
from tests.cgroups import nrgloops_cgroups
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
    with (
        pytest.raises(ValueError, match="cap_w"),
        PowercapGovernor(tree.root).applied(float("nan")),
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
        lines, _ = gov.run(10.0, _my_cgroup, s, 0.05)
    assert f"nrgloops-{os.getpid()}-" in lines  # the child ran inside the group
    assert nrgloops_cgroups() == before
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
    before = nrgloops_cgroups()
    gov = CgroupGovernor(journal=tmp_path / "j")
    with Sampler(FakeMeter(watts=5.0)) as s, pytest.raises(NrgError, match="KeyError"):
        gov.run(10.0, _fails, s, 0.1)
    assert nrgloops_cgroups() == before
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
    before = nrgloops_cgroups()
    p = _start_cg_holder(tmp_path / "j")
    assert len(nrgloops_cgroups() - before) == 1
    p.send_signal(sig)
    p.wait(timeout=20)
    assert nrgloops_cgroups() == before
    assert not list((tmp_path / "j").glob("*.json"))


@needs_cgroup
def test_restore_removes_a_left_cgroup_and_its_processes(tmp_path: Path) -> None:
    before = nrgloops_cgroups()
    p = _start_cg_holder(tmp_path / "j")
    (left,) = nrgloops_cgroups() - before
    p.kill()  # the run dies; its child dies with it (PR_SET_PDEATHSIG) but the group stays
    p.wait(timeout=10)
    assert left in nrgloops_cgroups()
    result = restore(tmp_path / "j")
    assert not result.errors, result.errors
    assert any("removed cgroup" in line for line in result.undone)
    assert nrgloops_cgroups() == before


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


# ---------------------------------------------------------------------------
# signals held across a change or a restore, whichever thread takes them

# Run in a child Python: a signal test that goes wrong must not interrupt pytest.
# ctrl_c() sends a signal to the process while the main thread masks it, so
# that the kernel hands it to another thread -- which it may do at any time
# (a worker thread is running, and the sampler's C thread).
_SIG_PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from nrgloops import governor as gv
    from nrgloops.sampler import Sampler
    from nrgloops.testing import FakeMeter

    def ctrl_c(sig=signal.SIGINT):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
        try:
            os.kill(os.getpid(), sig)
            time.sleep(0.2)  # the other thread takes it; its Python handler runs here
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    _stop = threading.Event()
    _worker = threading.Thread(target=_stop.wait, daemon=True)
    _worker.start()
    _sampler = Sampler(FakeMeter(watts=5.0), period=0.001).start()
    """
)


def _run_sig(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _SIG_PRELUDE + textwrap.dedent(body), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


_DEFER = """
    reached = []
    try:
        with gv.signals_raise():
            with gv._signals_deferred():
                ctrl_c(getattr(signal, sys.argv[1]))
                for _ in range(100_000):
                    pass
                reached.append(1)
            print("no exception", flush=True)
    except BaseException as exc:
        print(type(exc).__name__, "after" if reached else "inside", flush=True)
    print("handler", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    _sampler.stop()
"""


@pytest.mark.parametrize(
    ("sig", "raised"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")]
)
def test_signal_taken_by_another_thread_is_deferred(sig: str, raised: str) -> None:
    p = _run_sig(_DEFER, sig)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{raised} after", "handler True True"], p.stdout


def test_deferred_signal_with_default_action_still_ends_the_process() -> None:
    p = _run_sig(
        """
        with gv._signals_deferred():
            ctrl_c(signal.SIGTERM)
            print("block done", flush=True)
        print("survived", flush=True)
        """
    )
    assert p.stdout.splitlines() == ["block done"]
    assert p.returncode == -signal.SIGTERM


def test_deferred_ctrl_c_does_not_hide_an_exception_of_the_block() -> None:
    # A restore that fails raises; a Ctrl-C held meanwhile must not replace
    # that error (the CLI would then say the system is restored).
    p = _run_sig(
        """
        try:
            with gv._signals_deferred():
                ctrl_c()
                raise gv.NrgError("could not undo")
        except BaseException as exc:
            print(type(exc).__name__, flush=True)
        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        _sampler.stop()
        """
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["NrgError", "True"]


_SECOND_CTRL_C = """
    sys.path.insert(0, os.getcwd())
    from tests.fakes.powercap_tree import server
    tree = server(Path(sys.argv[1]) / "sys", packages=2)
    files = sorted(tree.root.glob("intel-rapl:?/constraint_0_power_limit_uw"))
    before = [f.read_text() for f in files]
    real = gv._write_text
    restoring = []
    def write(path, text):
        if restoring:
            ctrl_c()  # the user presses Ctrl-C again while the limits are restored
        real(path, text)
    gv._write_text = write
    try:
        with gv.PowercapGovernor(tree.root, journal=sys.argv[1] + "/j").applied(30):
            restoring.append(1)
            raise KeyboardInterrupt  # the first Ctrl-C
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("restored", [f.read_text() for f in files] == before)
    print("journals", len(list(Path(sys.argv[1], "j").glob("*.json"))))
    _sampler.stop()
"""


def test_powercap_second_ctrl_c_during_restore(tmp_path: Path) -> None:
    p = _run_sig(_SECOND_CTRL_C, str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["interrupted", "restored True", "journals 0"], p.stdout


_CGROUP_SECOND_CTRL_C = """
    parent = Path(sys.argv[1])
    (parent / "cgroup.subtree_control").write_text("memory\\n")
    real = gv._empty_cgroup
    def empty(group, *args):
        ctrl_c()  # a second Ctrl-C while the group is removed
        real(group, *args)
    gv._empty_cgroup = empty
    gov = gv.CgroupGovernor(cgroup=(2, parent), journal=parent / "j")
    try:
        with gov._group(gv.Journal(parent / "j")) as (version, group):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("group", group.exists())
    print("subtree", (parent / "cgroup.subtree_control").read_text().strip())
    _sampler.stop()
"""


def test_cgroup_second_ctrl_c_during_undo(tmp_path: Path) -> None:
    # A fake v2 parent: the group is a plain directory, subtree_control a file.
    p = _run_sig(_CGROUP_SECOND_CTRL_C, str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["interrupted", "group False", "subtree -cpu"], p.stdout


def test_hold_is_atomic_with_a_signal_from_another_thread(tmp_path: Path) -> None:
    # A signal while a limit is written lands after the write is noted, so
    # the restore puts it back.
    p = _run_sig(
        """
        sys.path.insert(0, os.getcwd())
        from tests.fakes.powercap_tree import server
        tree = server(Path(sys.argv[1]) / "sys", packages=2)
        files = sorted(tree.root.glob("intel-rapl:?/constraint_0_power_limit_uw"))
        before = [f.read_text() for f in files]
        real = gv._write_text
        def write(path, text):
            real(path, text)
            if text.strip() == "15000000":
                ctrl_c()  # just after the first limit is written
        gv._write_text = write
        try:
            with gv.PowercapGovernor(tree.root, journal=sys.argv[1] + "/j").applied(30):
                print("inside", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("restored", [f.read_text() for f in files] == before)
        _sampler.stop()
        """,
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["interrupted", "restored True"], p.stdout


# ---------------------------------------------------------------------------
# a journal that cannot be written while restoring


def _full_disk(self: Journal, key: int) -> None:
    raise NrgError("cannot write the governor journal: No space left on device")


def test_powercap_restores_every_limit_when_the_journal_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    with pytest.raises(NrgError) as info, gov.applied(30):
        assert limits(tree.root) != before
        monkeypatch.setattr(Journal, "drop", _full_disk)  # the disk fills meanwhile
    assert limits(tree.root) == before
    msg = str(info.value)
    assert "undone:" in msg and "may be" in msg and "stale" in msg
    assert msg.count("(back to 28000000)") == 2
    assert "could not undo" not in msg


def test_powercap_restore_failure_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    bad = str(tree.root / "intel-rapl:1" / "constraint_0_power_limit_uw")
    real = gv._write_text

    def write(path: str | os.PathLike[str], text: str) -> None:
        if os.fspath(path) == bad and text.strip() == "28000000":
            raise OSError(errno.EIO, "Input/output error", bad)
        real(path, text)

    with pytest.raises(NrgError, match="could not undo .*intel-rapl:1") as info, gov.applied(30):
        monkeypatch.setattr(gv, "_write_text", write)
    assert "undone: " in str(info.value) and "intel-rapl:0" in str(info.value)
    now = limits(tree.root)
    assert now["intel-rapl:0/constraint_0_power_limit_uw"] == "28000000"
    (journal,) = (tmp_path / "j").glob("*.json")
    assert [c["path"] for c in json.loads(journal.read_text())["changes"]] == [bad]
    monkeypatch.setattr(gv, "_write_text", real)
    doc = json.loads(journal.read_text())
    doc["pid"] = 999_999_999  # the run is gone
    journal.write_text(json.dumps(doc))
    assert not restore(tmp_path / "j").errors
    assert limits(tree.root) == before


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
        size = struct.unpack("<Q", gv._read_exact(res_r, 8))[0]
        body = gv._read_exact(res_r, size)
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
        names = gov.run(10.0, _thread_names, s, 0.05)
    assert names and "nrg-sampler" not in names


# ---------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"control_period": -1}, ValueError, r"control_period .*\(0, inf\)"),
        ({"control_period": 0}, ValueError, "control_period"),
        ({"control_period": float("nan")}, ValueError, "control_period"),
        ({"control_period": float("inf")}, ValueError, "control_period"),
        ({"control_period": "1"}, TypeError, "control_period"),
        ({"watts_per_cpu": 0}, ValueError, r"watts_per_cpu .*\(0, inf\)"),
        ({"watts_per_cpu": -8}, ValueError, "watts_per_cpu"),
        ({"watts_per_cpu": float("inf")}, ValueError, "watts_per_cpu"),
        ({"watts_per_cpu": True}, TypeError, "watts_per_cpu"),
        ({"idle_w": float("nan")}, ValueError, r"idle_w .*\[0, inf\)"),
        ({"idle_w": -1}, ValueError, "idle_w"),
        ({"idle_w": "5"}, TypeError, "idle_w"),
        ({"period_us": "x"}, TypeError, r"period_us .*\[1000, 1000000\]"),
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
    with pytest.raises(ValueError, match=r"window .*\(0, inf\)"):
        gov.run(10.0, lambda: 1, None, float("nan"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cap_w"):
        gov.run("10", lambda: 1, None, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="governor must be one of"):
        open_governor(None)  # type: ignore[arg-type]


def test_restore_reports_a_journal_it_cannot_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    p = _holder(tree.root, tmp_path / "j", 20)
    p.kill()
    p.wait(timeout=10)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", unlink)
    result = restore(tmp_path / "j")  # reports, does not raise
    assert limits(tree.root) == before
    assert result.undone and any("stale" in e for e in result.errors)
