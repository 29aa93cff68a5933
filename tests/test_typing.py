"""Users' code type-checks against the installed nrgloops: py.typed is seen
(also in an editable install), an int knob's value is an int, and calls of an
adapted function are checked against its body's signature."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="needs mypy (pip install -e '.[dev]')")

USER_CODE = """\
import nrgloops

threads = nrgloops.Knob(2, 16, 2)
share = nrgloops.Knob(0.0, 1.0, 0.25)
n: int = threads.value
reveal_type(threads.value)
reveal_type(share.value)


@nrgloops.nrg_adapt(nrgloops.PowerCap(45))
def search(s: str, limit: int = 10) -> int:
    return len(s)


@nrgloops.nrg_alternate(search)
def search_degraded(s: str, limit: int = 10) -> int:
    return 0


count: int = search("abc", limit=3)
search(3)  # line 21: not a str
text: str = search("abc")  # line 22: returns an int
"""


def test_user_code_type_checks_against_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From an empty directory: nrgloops must come from the install, not the checkout.
    monkeypatch.chdir(tmp_path)
    Path("user.py").write_text(textwrap.dedent(USER_CODE))
    out, err, status = api.run(["--strict", "--no-incremental", "--no-error-summary", "user.py"])
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ": " in line]
    assert not [x for x in lines if "import-not-found" in x or "import-untyped" in x], out
    revealed = [x.split('"')[1].removeprefix("builtins.") for x in lines if "Revealed" in x]
    assert revealed == ["int", "float"], out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert ":21:" in errors[0] and "arg-type" in errors[0]
    assert ":22:" in errors[1] and "assignment" in errors[1]
