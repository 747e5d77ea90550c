"""scirepo_singleuser.deferred (images/base/scirepo-singleuser): modules whose first import,
while a server starts, leaves their code to run at their first use.

Each case runs in a new interpreter, with the real module (standard library only) and
small packages written to a temporary directory; each package's code counts its runs in
a shared `runs` module. The image test checks the real list on a real server's start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.unit.conftest import REPO

SOURCE = REPO / "images" / "base" / "scirepo-singleuser" / "scirepo_singleuser" / "deferred.py"

PACKAGES = {
    "runs.py": "counts = {}\ndef ran(name):\n    counts[name] = counts.get(name, 0) + 1\n",
    "slow.py": "import time, runs\nruns.ran('slow')\ntime.sleep(0.3)\nVALUE = 42\n",
    "plain.py": "import runs\nruns.ran('plain')\nVALUE = 1\n",
    "broken.py": "import runs\nruns.ran('broken')\nraise ValueError('broken on purpose')\n",
    "pkg/__init__.py": "import runs\nruns.ran('pkg')\nX = 7\nfrom pkg import sub\n",
    "pkg/sub.py": "from pkg import X\nY = X + 1\n",
}


def run(tmp_path, code: str) -> dict:
    """Run `code` after `deferred` is installed for slow, broken, pkg and missing; the
    JSON it prints last."""
    for name, text in PACKAGES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    prelude = f"""
import importlib.util, json, sys, threading, types
sys.path.insert(0, {str(tmp_path)!r})
spec = importlib.util.spec_from_file_location("deferred", {str(SOURCE)!r})
deferred = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deferred)
installed = [deferred.install(["slow", "broken", "pkg", "missing"])]
installed.append(deferred.install())
import runs
"""
    res = subprocess.run(  # noqa: S603 - this Python, our own code
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_listed_module_runs_at_its_first_use_once(tmp_path):
    found = run(
        tmp_path,
        """
        import slow, plain
        before = dict(runs.counts)
        waiting = deferred.pending()
        from slow import VALUE
        print(json.dumps({"installed": installed, "before": before, "pending": waiting,
                          "value": VALUE, "after": runs.counts, "type": type(slow).__name__,
                          "left": deferred.pending(), "file": slow.__file__.endswith("slow.py"),
                          "loader": type(slow.__loader__).__name__}))
        """,
    )
    assert found["installed"] == [True, False]  # once in place, not a second time
    assert found["before"] == {"plain": 1}, found  # plain is not listed: it ran at import
    assert found["pending"] == ["slow"]
    assert found["value"] == 42 and found["after"] == {"plain": 1, "slow": 1}, found
    assert found["type"] == "module" and found["left"] == [], found
    assert found["file"] and found["loader"] == "SourceFileLoader", found


def test_two_threads_at_first_use_run_its_code_once(tmp_path):
    found = run(
        tmp_path,
        """
        import slow
        seen = []
        threads = [threading.Thread(target=lambda: seen.append(slow.VALUE)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({"seen": seen, "runs": runs.counts}))
        """,
    )
    assert found["seen"] == [42, 42, 42, 42] and found["runs"] == {"slow": 1}, found


def test_setting_an_attribute_first_runs_the_code_then_sets_it(tmp_path):
    found = run(
        tmp_path,
        """
        import slow
        slow.VALUE = 5
        print(json.dumps({"value": slow.VALUE, "runs": runs.counts}))
        """,
    )
    assert found == {"value": 5, "runs": {"slow": 1}}, found


def test_a_package_that_imports_itself_while_it_runs(tmp_path):
    found = run(
        tmp_path,
        """
        import pkg
        before = dict(runs.counts)
        import pkg.sub
        print(json.dumps({"before": before, "y": pkg.sub.Y, "runs": runs.counts}))
        """,
    )
    assert found == {"before": {}, "y": 8, "runs": {"pkg": 1}}, found


def test_a_module_that_fails_fails_at_each_use_with_its_own_error(tmp_path):
    found = run(
        tmp_path,
        """
        import broken
        errors = []
        for _ in range(2):
            try:
                broken.anything
            except ValueError as e:
                errors.append(str(e))
        try:
            import missing
        except ModuleNotFoundError as e:
            errors.append(str(e))
        print(json.dumps({"errors": errors, "runs": runs.counts}))
        """,
    )
    assert found["errors"] == [
        "broken on purpose",
        "broken on purpose",
        "No module named 'missing'",
    ], found
    assert found["runs"] == {"broken": 2}, found


def test_after_uninstall_a_listed_module_imports_as_usual(tmp_path):
    found = run(
        tmp_path,
        """
        deferred.uninstall()
        import slow
        print(json.dumps({"runs": runs.counts, "pending": deferred.pending(),
                          "again": deferred.install()}))
        """,
    )
    assert found == {"runs": {"slow": 1}, "pending": [], "again": True}, found
