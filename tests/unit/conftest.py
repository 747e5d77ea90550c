"""Shared helpers of the unit tests: import scirepo from this checkout, run the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Plain `pytest` (unlike `python -m pytest`) does not put the checkout on sys.path; an
# installed scirepo must not shadow the code under test either.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def run_cli(capsys):
    """Run `scirepo ARGS` in this process; return (exit code, stdout, stderr)."""
    from scirepo import cli

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
