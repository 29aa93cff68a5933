"""Signals held across a change or a restore, whichever thread takes them.

Each case runs in a child Python: a signal test that goes wrong must not
interrupt pytest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.governor_helpers import REPO

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
    from nrgloops._errors import NrgError
    from nrgloops.governors import _cgroupfs, _files, _signals, signals_raise
    from nrgloops.governors import CgroupGovernor, Journal, PowercapGovernor
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
        with signals_raise():
            with _signals.signals_deferred():
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
        with _signals.signals_deferred():
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
            with _signals.signals_deferred():
                ctrl_c()
                raise NrgError("could not undo")
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
    real = _files.write_text
    restoring = []
    def write(path, text):
        if restoring:
            ctrl_c()  # the user presses Ctrl-C again while the limits are restored
        real(path, text)
    _files.write_text = write
    try:
        with PowercapGovernor(tree.root, journal=sys.argv[1] + "/j").applied(30):
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
    real = _cgroupfs.empty_cgroup
    def empty(group, *args):
        ctrl_c()  # a second Ctrl-C while the group is removed
        real(group, *args)
    _cgroupfs.empty_cgroup = empty
    gov = CgroupGovernor(cgroup=(2, parent), journal=parent / "j")
    try:
        with gov._group(Journal(parent / "j")) as (version, group):
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
        real = _files.write_text
        def write(path, text):
            real(path, text)
            if text.strip() == "15000000":
                ctrl_c()  # just after the first limit is written
        _files.write_text = write
        try:
            with PowercapGovernor(tree.root, journal=sys.argv[1] + "/j").applied(30):
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
