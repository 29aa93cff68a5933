"""The journal and ``restore``: only this user's own directory, only files the
governors write, every bad journal or entry skipped by name, the rest restored."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from nrgloops._errors import NrgError
from nrgloops.cli import main
from nrgloops.governors import Journal, JournalUntrusted, journal_dir, restore, trusted_dir
from tests.fakes.powercap_tree import server
from tests.governor_helpers import DEAD_PID, hold_powercap, limits, mark_dead

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _plant(directory: Path, name: str, text: str | bytes) -> Path:
    """A journal file written by hand (mode 0600, this user's)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    p = directory / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    p.chmod(0o600)
    return p


def _dead_write(path: Path, old: str) -> dict[str, object]:
    return {
        "pid": DEAD_PID,
        "started": None,
        "changes": [{"op": "write", "path": str(path), "old": old}],
    }


def test_restore_keeps_failed_entries(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.add({"op": "write", "path": str(tmp_path / "missing" / "enabled"), "old": "1"})
    mark_dead(j.path)
    result = restore(tmp_path / "j", trees=[tmp_path])
    assert result.errors and not result.undone and not result.bad
    assert j.path.exists()  # kept, so the user can see what is left


def test_journal_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NRGLOOPS_JOURNAL_DIR", str(tmp_path))
    assert journal_dir() == tmp_path
    monkeypatch.delenv("NRGLOOPS_JOURNAL_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert journal_dir() == Path("/run/nrgloops")
    # a user: the runtime directory, else /tmp/nrgloops-<uid>
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    monkeypatch.setattr(os, "getuid", lambda: 4321)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert journal_dir() == tmp_path / "nrgloops"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert journal_dir() == Path("/tmp/nrgloops-4321")


def test_journal_add_failure_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "ro").write_text("")  # a file where the directory should be
    j = Journal(tmp_path / "ro")
    with pytest.raises(NrgError, match="NRGLOOPS_JOURNAL_DIR"):
        j.add({"op": "write", "path": "x", "old": "1"})
    assert j.entries == []


def test_restore_reports_a_journal_it_cannot_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    p = hold_powercap(tree.root, tmp_path / "j", 20)
    p.kill()
    p.wait(timeout=10)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", unlink)
    result = restore(tmp_path / "j", trees=[tree.base])  # reports, does not raise
    assert limits(tree.root) == before
    assert result.undone and any("stale" in e for e in result.errors)


# ---------------------------------------------------------------------------
# bad journals: each skipped by name, the others restored


def test_bad_journals_are_skipped_and_the_rest_restored(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=2)
    before = limits(tree.root)
    lim0 = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim1 = tree.root / "intel-rapl:1" / "constraint_0_power_limit_uw"
    lim0.write_text("5000000\n")  # left by dead runs
    lim1.write_text("6000000\n")
    j = tmp_path / "j"
    bad = {
        "1-1.json": "[1, 2, 3]",  # valid JSON, not an object
        "1-2.json": json.dumps({"pid": DEAD_PID}),  # no changes
        "1-3.json": json.dumps({"pid": "x", "changes": []}),  # pid not an int
        "1-4.json": "[" * 200_000 + "]" * 200_000,  # nested beyond any journal
        "1-5.json": b"\xff\xfe not utf-8",
        "1-6.json": "{not json",
        "1-7.json": " " * (1 << 21),  # larger than any journal
    }
    for name, text in bad.items():
        _plant(j, name, text)
    _plant(j, "2-1.json", json.dumps(_dead_write(lim0, "28000000")))
    mixed = _dead_write(lim1, "28000000")
    mixed["changes"] = [  # type: ignore[index]
        "not an entry",
        {"op": "write", "old": "1"},  # no path
        {"op": "format-disk", "path": str(lim1)},
        {"op": "write", "path": str(lim1), "old": {"deep": [1]}},
        {"op": "write", "path": str(lim1), "old": "28000000"},  # the one good entry
    ]
    _plant(j, "2-2.json", json.dumps(mixed))

    result = restore(j, trees=[tree.base])
    assert limits(tree.root) == before  # both good entries were undone
    assert len(result.undone) == 2 and not result.errors
    for name in bad:
        assert sum(name in line for line in result.bad) == 1, (name, result.bad)
    assert sum("2-2.json: entry" in line for line in result.bad) == 4
    assert any("nested too deeply" in line for line in result.bad)
    assert any("not an object" in line for line in result.bad)
    # the bad entries stay in their journal; the good journal is gone
    assert not (j / "2-1.json").exists()
    assert len(json.loads((j / "2-2.json").read_text())["changes"]) == 4


def test_cli_restore_exit_code_says_something_was_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    before = limits(tree.root)
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim.write_text("5000000\n")
    j = tmp_path / "j"
    _plant(j, "1-1.json", '{"pid": 7, "changes": "none"}')
    _plant(j, "1-2.json", json.dumps(_dead_write(lim, "28000000")))
    argv = ["governor", "restore", "--dir", str(j), "--tree", str(tree.base)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "1-1.json: skipped" in err and "undone: restored" in out
    assert limits(tree.root) == before
    assert main(argv) == 1  # the bad one is still there and still said
    (j / "1-1.json").unlink()
    assert main(argv) == 0


# ---------------------------------------------------------------------------
# trust: the directory, the files, the paths


def test_journal_dir_is_made_0700_and_used(tmp_path: Path) -> None:
    d = tmp_path / "new" / "j"
    assert trusted_dir(d, create=True)
    assert (os.stat(d).st_mode & 0o777) == 0o700
    assert not trusted_dir(tmp_path / "absent", create=False)


def test_a_symlinked_journal_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    j = Journal(tmp_path / "link")
    with pytest.raises(NrgError, match="symlink"):
        j.add({"op": "write", "path": "x", "old": "1"})
    assert not list(real.iterdir())
    result = restore(tmp_path / "link", trees=[tmp_path])
    assert any("symlink" in line and "nothing in it was read" in line for line in result.bad)


def test_a_journal_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "j"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(JournalUntrusted, match="mode 0777, not 0700"):
        trusted_dir(d, create=True)
    assert restore(d, trees=[tmp_path]).bad


@needs_root
def test_a_journal_dir_made_by_someone_else_is_refused(tmp_path: Path) -> None:
    # As /tmp/nrgloops-<uid> would be if another user made it first.
    d = tmp_path / "j"
    d.mkdir(mode=0o700)
    victim = tmp_path / "enabled"
    victim.write_text("precious\n")
    _plant(d, "1-1.json", json.dumps(_dead_write(victim, "0")))
    os.chown(d, 12345, 12345)
    with pytest.raises(NrgError, match="owned by uid 12345"):
        Journal(d).add({"op": "write", "path": "x", "old": "1"})
    result = restore(d, trees=[tmp_path])
    assert not result.undone and any("owned by uid 12345" in line for line in result.bad)
    assert victim.read_text() == "precious\n"


@needs_root
def test_a_planted_journal_file_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "j"
    victim = tmp_path / "enabled"
    victim.write_text("precious\n")
    planted = _plant(d, "1-1.json", json.dumps(_dead_write(victim, "0")))
    os.chown(planted, 12345, 12345)
    (d / "1-2.json").symlink_to(planted)
    result = restore(d, trees=[tmp_path])
    assert not result.undone
    assert any("1-1.json" in line and "owned by uid 12345" in line for line in result.bad)
    assert any("1-2.json" in line for line in result.bad)
    assert victim.read_text() == "precious\n"


def test_restore_writes_only_governed_files_under_governed_trees(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)
    home = tmp_path / "home"
    home.mkdir()
    victim = home / "notes.txt"
    victim.write_text("mine\n")
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    sneaky = tree.root / "intel-rapl:0" / "enabled-link"
    sneaky.symlink_to(home / "enabled")  # a governed name, but it leads outside
    (home / "enabled").write_text("1\n")
    outside_group = home / f"nrgloops-{DEAD_PID}-1"
    outside_group.mkdir()
    doc = {
        "pid": DEAD_PID,
        "changes": [
            {"op": "write", "path": str(victim), "old": "0"},  # not a limit file
            {"op": "write", "path": str(home / "enabled"), "old": "0"},  # outside the tree
            {"op": "write", "path": str(sneaky), "old": "0"},
            {"op": "write", "path": str(lim), "old": "9; rm -rf /"},  # not a value
            {"op": "cgroup", "path": str(tree.base / "cgroup-of-someone")},  # not ours
            {"op": "cgroup", "path": str(outside_group)},  # outside the trees
            {"op": "subtree", "path": str(home / "cgroup.subtree_control")},
        ],
    }
    _plant(tmp_path / "j", "1-1.json", json.dumps(doc))
    result = restore(tmp_path / "j", trees=[tree.base])
    assert not result.undone and len(result.bad) == 7, result.bad
    assert victim.read_text() == "mine\n" and (home / "enabled").read_text() == "1\n"
    assert outside_group.is_dir()
    assert lim.read_text() == "28000000\n"


def test_a_planted_tmp_fallback_dir_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A user without XDG_RUNTIME_DIR falls back to /tmp/nrgloops-<uid>, which
    # anyone could make first: here it exists, made by another user (root).
    uid = 3_000_000 + os.getpid()  # no real user has it
    monkeypatch.delenv("NRGLOOPS_JOURNAL_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    planted = Path(f"/tmp/nrgloops-{uid}")
    planted.mkdir(mode=0o700)
    try:
        monkeypatch.setattr(os, "geteuid", lambda: uid)
        monkeypatch.setattr(os, "getuid", lambda: uid)
        assert journal_dir() == planted
        with pytest.raises(NrgError, match=f"owned by uid 0, not by you \\(uid {uid}\\)"):
            Journal().add({"op": "write", "path": "x", "old": "1"})
        assert not list(planted.iterdir())
        result = restore()
        assert not result.undone and any(str(planted) in line for line in result.bad)
    finally:
        monkeypatch.undo()
        planted.rmdir()


# ---------------------------------------------------------------------------
# values: only what the file can have held is written back


def test_restore_refuses_an_old_value_outside_the_zones_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = server(tmp_path / "sys", packages=1)  # max_power_uw 28 W
    zone = tree.root / "intel-rapl:0"
    lim = zone / "constraint_0_power_limit_uw"
    lim.write_text("10000000\n")  # what a dead run left
    group = tree.base / "cg" / f"nrgloops-{DEAD_PID}-1"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("50000 100000\n")
    j = tmp_path / "j"
    # The oldest journal is put back last, so its value would win: corrupt here.
    bad = {
        "pid": DEAD_PID,
        "changes": [
            {"op": "write", "path": str(lim), "old": "99999999999999999999"},
            {"op": "write", "path": str(lim), "old": "4095875001"},  # 1 µW over the field
            {"op": "write", "path": str(zone / "enabled"), "old": "2"},
            {"op": "write", "path": str(group / "cpu.max"), "old": "1"},  # never restored
        ],
    }
    _plant(j, "1-1.json", json.dumps(bad))
    _plant(j, "1-2.json", json.dumps(_dead_write(lim, "28000000")))  # the zone's max: fine
    result = restore(j, trees=[tree.base])
    assert lim.read_text() == "28000000\n"
    assert (zone / "enabled").read_text() == "1\n"
    assert (group / "cpu.max").read_text() == "50000 100000\n"
    assert result.undone == [f"restored {lim} to '28000000'"]
    assert len(result.bad) == 4 and all("1-1.json: entry" in line for line in result.bad)
    # entries are undone latest first
    assert "99999999999999999999 µW" in result.bad[3] and "maximum (4095875000" in result.bad[3]
    assert "old must be 0 or 1" in result.bad[1] and "4095875001 µW" in result.bad[2]
    assert "not a powercap limit or enabled file" in result.bad[0]
    assert len(json.loads((j / "1-1.json").read_text())["changes"]) == 4  # kept, to be seen
    argv = ["governor", "restore", "--dir", str(j), "--tree", str(tree.base)]
    assert main(argv) == 1
    assert "above the PL1 field's maximum" in capsys.readouterr().err


def test_restore_range_without_max_power_is_the_pl1_field(tmp_path: Path) -> None:
    tree = server(tmp_path / "sys", packages=1)
    zone = tree.root / "intel-rapl:0"
    lim = zone / "constraint_0_power_limit_uw"
    (zone / "constraint_0_max_power_uw").unlink()
    field_max = (2**15 - 1) * 125_000  # 15 bits of 1/8 W
    _plant(tmp_path / "j", "1-1.json", json.dumps(_dead_write(lim, str(field_max + 1))))
    _plant(tmp_path / "j", "1-2.json", json.dumps(_dead_write(lim, str(field_max))))
    result = restore(tmp_path / "j", trees=[tree.base])
    assert len(result.undone) == 1 and len(result.bad) == 1
    assert lim.read_text() == f"{field_max}\n"


def test_restore_puts_back_an_original_above_max_power_within_the_field(tmp_path: Path) -> None:
    # firmware often leaves PL1 "unlimited", above the zone's max_power_uw: that is
    # what was there, so it comes back (only new caps are bounded by max_power_uw)
    tree = server(tmp_path / "sys", packages=1)  # max_power_uw 28 W
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim.write_text("10000000\n")
    _plant(tmp_path / "j", "1-1.json", json.dumps(_dead_write(lim, "4095875000")))
    result = restore(tmp_path / "j", trees=[tree.base])
    assert not result.bad and lim.read_text() == "4095875000\n"


# ---------------------------------------------------------------------------
# a journal whose run cannot be told from a later process with its pid


def test_a_journal_without_a_start_time_and_a_live_pid_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    lim.write_text("10000000\n")
    j = tmp_path / "j"
    pid = os.getppid()  # alive: as a pid reused after the run died would be
    written = {"pid": pid, "changes": _dead_write(lim, "28000000")["changes"]}  # no "started"
    _plant(j, "1-1.json", json.dumps(written))
    result = restore(j, trees=[tree.base])
    assert not result.undone and not result.skipped and len(result.errors) == 1
    assert f"process {pid} exists" in result.errors[0] and "--force" in result.errors[0]
    assert lim.read_text() == "10000000\n" and (j / "1-1.json").exists()
    argv = ["governor", "restore", "--dir", str(j), "--tree", str(tree.base)]
    assert main(argv) == 1
    assert "no start time" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0  # after checking the pid
    assert lim.read_text() == "28000000\n" and not (j / "1-1.json").exists()


# ---------------------------------------------------------------------------
# every rewrite of a journal is durable


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each os.fsync is given: "file" or "dir"."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_every_journal_rewrite_syncs_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = server(tmp_path / "sys", packages=1)
    lim = tree.root / "intel-rapl:0" / "constraint_0_power_limit_uw"
    dram = tree.root / "intel-rapl:0:0" / "constraint_0_power_limit_uw"
    j = tmp_path / "j"
    seen = _fsyncs(monkeypatch)
    # a run's own journal
    journal = Journal(j)
    journal.add({"op": "write", "path": str(lim), "old": "28000000"})
    assert seen == ["file", "dir"]
    journal.path.unlink()
    # a dead run's journal, rewritten by a run taking over one of its entries
    dead = {
        "pid": DEAD_PID,
        "changes": [
            {"op": "write", "path": str(dram), "old": "0"},
            {"op": "write", "path": str(lim), "old": "28000000"},
        ],
    }
    planted = _plant(j, "1-1.json", json.dumps(dead))
    seen.clear()
    Journal(j).retire_others(str(lim))
    assert seen == ["file", "dir"]
    assert len(json.loads(planted.read_text())["changes"]) == 1
    # a journal `restore` keeps, with what it could not undo
    dram.unlink()
    seen.clear()
    result = restore(j, trees=[tree.base])
    assert result.errors and planted.exists()
    assert seen == ["file", "dir"]
