"""The package's shape: what the core imports, the bench extra, the version."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import nrgloops


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_core_and_the_cli_parser_import_no_benchmark() -> None:
    done = _python(
        """
        import sys
        import nrgloops, nrgloops.cli
        nrgloops.cli._parser()
        bench = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("numpy", "matplotlib")
                       or m.startswith("nrgloops.bench"))
        print(bench)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bench_without_its_extra_says_what_to_install() -> None:
    # numpy "missing": None in sys.modules makes every import of it fail
    done = _python(
        """
        import sys
        sys.modules["numpy"] = None
        from nrgloops.cli import main
        sys.exit(main(["bench", "substring", "--quick"]))
        """
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'pip install "nrgloops[bench]"' in done.stderr
    assert "Traceback" not in done.stderr


def test_the_version_is_written_once() -> None:
    assert importlib.metadata.version("nrgloops") == nrgloops.__version__
