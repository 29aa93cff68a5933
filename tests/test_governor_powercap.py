"""The PL1 governor on fake powercap trees: what it writes, what it puts back."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest

from nrgloops._errors import NrgError
from nrgloops.governors import (
    GovernorBusy,
    GovernorUnavailable,
    Journal,
    PowercapGovernor,
    _files,
    restore,
)
from tests.fakes.powercap_tree import client, server
from tests.governor_helpers import hold_powercap, limits

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
        gov.run(30, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert limits(tree.root) == before
    assert gov.run(30, lambda: 42).result == 42
    assert not list((tmp_path / "j").glob("*.json"))


def test_powercap_bios_locked_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Package 1's limit is locked: the write fails with EACCES even for root.
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    locked = str(tree.root / "intel-rapl:1" / "constraint_0_power_limit_uw")
    real = _files.write_text

    def write(path: str | os.PathLike[str], text: str) -> None:
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        real(path, text)

    monkeypatch.setattr(_files, "write_text", write)
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_powercap_restores_on_signal(tmp_path: Path, sig: int) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 30)
    assert limits(tree.root) != before
    p.send_signal(sig)
    p.wait(timeout=20)
    assert p.returncode != 0
    assert limits(tree.root) == before
    assert not list((tmp_path / "j").glob("*.json"))


def test_restore_after_sigkill(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 40)
    # While the run lives, restore leaves its changes to it.
    result = restore(tmp_path / "j", trees=[tree.base])
    assert result.skipped and not result.undone
    assert limits(tree.root) != before
    p.kill()
    p.wait(timeout=10)
    assert limits(tree.root) != before  # SIGKILL: nothing could run
    result = restore(tmp_path / "j", trees=[tree.base])
    assert len(result.undone) == 2 and not result.errors
    assert limits(tree.root) == before
    assert not list((tmp_path / "j").glob("*.json"))
    assert restore(tmp_path / "j", trees=[tree.base]).undone == []  # idempotent


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
    real = _files.write_text

    def write(path: str | os.PathLike[str], text: str) -> None:
        if os.fspath(path) == bad and text.strip() == "28000000":
            raise OSError(errno.EIO, "Input/output error", bad)
        real(path, text)

    with pytest.raises(NrgError, match="could not undo .*intel-rapl:1") as info, gov.applied(30):
        monkeypatch.setattr(_files, "write_text", write)
    assert "undone: " in str(info.value) and "intel-rapl:0" in str(info.value)
    now = limits(tree.root)
    assert now["intel-rapl:0/constraint_0_power_limit_uw"] == "28000000"
    (journal,) = (tmp_path / "j").glob("*.json")
    # stored as its real path (the zone's directory under devices/)
    assert [c["path"] for c in json.loads(journal.read_text())["changes"]] == [
        os.path.realpath(bad)
    ]
    monkeypatch.setattr(_files, "write_text", real)
    doc = json.loads(journal.read_text())
    doc["pid"] = 999_999_999  # the run is gone
    journal.write_text(json.dumps(doc))
    assert not restore(tmp_path / "j", trees=[tree.base]).errors
    assert limits(tree.root) == before


# ---------------------------------------------------------------------------
# limits: a cap the zones cannot take is refused before anything changes


def test_caps_outside_the_zones_range_are_refused(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)  # max_power_uw 28 W each
    before = limits(tree.root)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    assert gov.cap_range() == (2.0, 56.0)
    for cap in (56.5, 1e9, 1.5, 1e-9):
        refused = pytest.raises(ValueError, match=r"cap_w must be in \[2, 56\] W")
        with refused as info, gov.applied(cap):
            pass
        assert "nothing was changed" in str(info.value)
        assert limits(tree.root) == before
        assert not (tmp_path / "j").exists() or not list((tmp_path / "j").glob("*.json"))
    with gov.applied(56.0) as held:  # the edges are fine
        assert [uw for _, uw in held] == [28_000_000, 28_000_000]
    with gov.applied(2.0):
        pass
    assert limits(tree.root) == before


def test_a_zone_without_max_power_gets_the_fields_limit(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)
    (tree.root / "intel-rapl:0" / "constraint_0_max_power_uw").write_text("0\n")
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j")
    lo, hi = gov.cap_range()
    assert (lo, hi) == (1.0, (2**15 - 1) / 8)  # 15 bits of 1/8 W
    with pytest.raises(ValueError, match="max_power_uw"):
        gov.run(5000.0, lambda: None)


# ---------------------------------------------------------------------------
# overlapping runs: one owner per limit, and the original comes back


def _j(tmp_path: Path, name: str = "j") -> list[Path]:
    return list((tmp_path / name).glob("*.json"))


def test_a_second_run_in_the_same_process_is_refused(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    first = PowercapGovernor(tree.root, journal=tmp_path / "j")
    second = PowercapGovernor(tree.root, journal=tmp_path / "j2")
    with first.applied(30):
        during = limits(tree.root)
        with pytest.raises(GovernorBusy, match="this process") as info, second.applied(20):
            pass
        assert "wait for that run to end" in str(info.value)
        assert limits(tree.root) == during  # the second changed nothing
        assert not _j(tmp_path, "j2")
    assert limits(tree.root) == before
    with second.applied(20):  # free again
        pass
    assert limits(tree.root) == before


def test_a_second_run_in_another_process_is_refused(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 30)
    try:
        with (
            pytest.raises(GovernorBusy, match=f"process {p.pid}"),
            PowercapGovernor(tree.root, journal=tmp_path / "j2").applied(20),
        ):
            pass
    finally:
        p.terminate()
        p.wait(timeout=20)
    assert limits(tree.root) == before


def test_a_run_after_a_crashed_one_puts_the_original_back(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 40)
    p.kill()  # dies holding 20 W per package
    p.wait(timeout=10)
    with PowercapGovernor(tree.root, journal=tmp_path / "j").applied(30):
        pass
    assert limits(tree.root) == before  # not the dead run's 20 W
    assert not _j(tmp_path)  # the dead run's entries were taken over, then undone


def test_a_run_killed_after_taking_over_leaves_the_original_to_restore(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    first = hold_powercap(tree.root, tmp_path / "j", 40)
    first.kill()
    first.wait(timeout=10)
    (old_journal,) = _j(tmp_path)
    second = hold_powercap(tree.root, tmp_path / "j", 30)
    try:
        assert not old_journal.exists()  # taken over by the second run
        (journal,) = _j(tmp_path)
        assert {c["old"] for c in json.loads(journal.read_text())["changes"]} == {"28000000"}
    finally:
        second.kill()
        second.wait(timeout=10)
    assert restore(tmp_path / "j", trees=[tree.base]).undone
    assert limits(tree.root) == before


def test_restore_after_both_overlapping_runs_crash(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    for cap in (40, 30):  # the second starts after the first died, then dies too
        p = hold_powercap(tree.root, tmp_path / "j", cap)
        p.kill()
        p.wait(timeout=10)
    assert limits(tree.root) != before
    result = restore(tmp_path / "j", trees=[tree.base])
    assert not result.errors and not result.bad
    assert limits(tree.root) == before
    assert not _j(tmp_path)


def test_restore_waits_for_a_live_owner_in_another_journal_dir(tmp_path: Path) -> None:
    # The first run dies with its journal in j1; the second uses j2, so it
    # cannot see that journal and records the dead run's cap as its "old".
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j1", 20)
    p.kill()
    p.wait(timeout=10)
    q = hold_powercap(tree.root, tmp_path / "j2", 10)
    try:
        result = restore(tmp_path / "j1", trees=[tree.base])  # the second owns it now
        assert not result.undone and any("held by a live governed run" in e for e in result.errors)
        assert _j(tmp_path, "j1")  # kept for later
    finally:
        q.terminate()
        q.wait(timeout=20)
    assert limits(tree.root) != before  # the second put back the first's cap
    result = restore(tmp_path / "j1", trees=[tree.base])
    assert result.undone and not result.errors
    assert limits(tree.root) == before


def test_run_returns_a_trace_of_power_and_limit(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    gov = PowercapGovernor(tree.root, journal=tmp_path / "j", record_period=0.01)
    readings = iter(range(1000))
    trace = gov.run(30, lambda: time.sleep(0.1) or "done", lambda: float(next(readings)))
    assert trace.result == "done" and trace.setting == "limit_w"
    assert len(trace.times) >= 2 and trace.times == sorted(trace.times)
    assert trace.power_w[:2] == [0.0, 1.0]
    assert set(trace.settings) == {30.0} and trace.mean_setting() == 30.0
    plain = gov.run(30, lambda: 7)
    assert plain.result == 7 and len(plain.settings) == 1 and math.isnan(plain.power_w[0])
    with pytest.raises(TypeError, match="power must be a callable"):
        gov.run(30, lambda: 7, 5.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# one zone, two spellings: /sys/class/powercap links into /sys/devices


def test_a_run_under_another_spelling_of_the_zone_puts_the_original_back(
    tmp_path: Path,
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 10)  # under class/powercap, then SIGKILL
    p.kill()
    p.wait(timeout=10)
    devices_root = tree.devices / "intel-rapl"  # the same zones, by their real paths
    with PowercapGovernor(devices_root, journal=tmp_path / "j").applied(15):
        (journal,) = _j(tmp_path)  # the dead run's entry taken over
        assert {c["old"] for c in json.loads(journal.read_text())["changes"]} == {"28000000"}
    assert limits(tree.root) == before  # not the dead run's 10 W
    assert not _j(tmp_path)


def test_an_unresolved_path_in_an_old_journal_is_still_taken_over(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim.write_text("10000000\n")  # a dead run's cap, its journal written unresolved
    (tmp_path / "j").mkdir(mode=0o700)
    old = {"pid": 999_999_999, "changes": [{"op": "write", "path": str(lim), "old": "28000000"}]}
    (tmp_path / "j" / "1-1.json").write_text(json.dumps(old))
    with PowercapGovernor(tree.devices / "intel-rapl", journal=tmp_path / "j").applied(15):
        pass
    assert limits(tree.root) == before
    assert not _j(tmp_path)


def test_a_run_does_not_inherit_a_value_the_zone_cannot_hold(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)  # max_power_uw 28 W
    before = limits(tree.root)
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim.write_text("10000000\n")  # left by a dead run
    j = tmp_path / "j"
    j.mkdir(mode=0o700)

    def dead(old: str) -> str:
        return json.dumps(
            {"pid": 999_999_999, "changes": [{"op": "write", "path": str(lim), "old": old}]}
        )

    (j / "1-1.json").write_text(dead("99999999999999999999"))  # the oldest: corrupt
    (j / "1-2.json").write_text(dead("28000000"))
    with PowercapGovernor(tree.root, journal=j).applied(15):
        (journal,) = (p for p in _j(tmp_path) if p.name not in ("1-1.json", "1-2.json"))
        changes = json.loads(journal.read_text())["changes"]
        assert [c["old"] for c in changes if c["path"].endswith("_uw")] == ["28000000"]
    assert limits(tree.root) == before  # the good original, not the masked one
