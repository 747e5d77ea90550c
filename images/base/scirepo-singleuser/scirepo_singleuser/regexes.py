"""Regular expressions compiled when the image is built, not at every server start.

A server's start compiles some 370 regular expressions: 180 while importing Jupyter Server,
JupyterLab and their dependencies (jinja2's identifier class alone takes 25-40 ms;
rfc3986-validator, semver and yaml have large ones), and 190 while it sets up.
Python compiles a pattern in two steps: `re._parser` and `re._compiler` turn its text into
a list of instruction codes, in Python, which is nearly all the time; then `_sre.compile`,
in C, makes the pattern object from that list. The first step was the same work at every
start.

`main()` (run when the image is built, and again by stacks after their packages) starts a
server twice, each in a new process up to the point where it would serve, as two users and
with two string hash seeds, lists the patterns each compiles, and writes the instruction
codes of those both compiled to RECORD: what differs between users (the server's routes
name its URL prefix) or between processes (a pattern built from a set follows the hash
order) is left out. An entry is kept only if the pattern object made from it compares
equal (same pattern, flags, codes and groups) to the one Python compiles itself.

`install()`, called first thing when scirepo_singleuser is imported, makes
`re._compiler.compile` take a recorded pattern's codes from RECORD and run only the C
step. Any other pattern is compiled as before, and so is everything when RECORD is missing
or was written by another Python (its version and `_sre.MAGIC` are in the file). Once the
server serves it calls `uninstall()`: Python's own compile is back, and the record
(0.57 MiB as lists of ints; the codes are stored packed, as bytes) is not held for the
life of the server.

Compiling the 312 patterns recorded then (267 since deferred.py) takes Python 55-61 ms;
reading the record takes 0.2-0.5 ms, and making them from it (unpacking the codes, then
`_sre.compile`) about 1 ms. From the interpreter's start to a server ready to serve, in
the base image, 15 starts each in turns: median 0.658 s without the record, 0.587 s with
it (74 ms less per pair, median; faster in 12 of 15 pairs).

Standard library only: this module is imported before anything else in the server.
"""

from __future__ import annotations

import _sre
import array
import marshal
import os
import re
import subprocess
import sys
import tempfile
from re import _compiler, _parser

RECORD = os.path.join(sys.prefix, "share", "scirepo", "regexes")
DEBUG = int(re.DEBUG)  # such a compile prints its codes, so it is never recorded
# A hook already in place (a recording under way, or an earlier install) carries this name.
MARK = "scirepo_regexes"
# The recording starts a server twice, as two users and with two string hash seeds: what
# only one start compiles (routes name the user; a pattern built from a set follows the
# hash order) is left out.
STARTS = (("scirepo-regexes-a", "1"), ("scirepo-regexes-b", "2"))
# The array type of one instruction code: unsigned, _sre.CODESIZE bytes.
CODE = next(t for t in "IL" if array.array(t).itemsize == _sre.CODESIZE)


def python_key() -> tuple:
    """What the recorded codes depend on: this Python and its regular expression engine."""
    return (sys.version, _sre.MAGIC, _sre.CODESIZE)


def parts(pattern: str | bytes, flags: int) -> tuple:
    """The arguments after the pattern of `_sre.compile`, as `re._compiler.compile`
    computes them (CPython 3.11), the codes packed as machine words (bytes): a third of
    the memory of a list of ints, read at once."""
    p = _parser.parse(pattern, flags)
    code = array.array(CODE, _compiler._code(p, flags)).tobytes()
    groupindex = dict(p.state.groupdict)
    indexgroup = [None] * p.state.groups
    for name, index in groupindex.items():
        indexgroup[index] = name
    return (int(flags | p.state.flags), code, p.state.groups - 1, groupindex, tuple(indexgroup))


def build(pattern: str | bytes, found: tuple):
    """The pattern object from its recorded parts: `_sre.compile`, the C step alone."""
    flags, packed, groups, groupindex, indexgroup = found
    code = array.array(CODE)
    code.frombytes(packed)
    return _sre.compile(pattern, flags, code.tolist(), groups, groupindex, indexgroup)


def same(a, b) -> bool:
    """Two pattern objects alike: pattern, flags and codes (their ==), and groups."""
    return a == b and a.groups == b.groups and dict(a.groupindex) == dict(b.groupindex)


def read(path: str = RECORD) -> dict:
    """The recorded patterns, {(pattern, flags): parts}; empty when the file is missing,
    unreadable or written by another Python."""
    try:
        with open(path, "rb") as f:
            data = f.read()  # at once: marshal.load(f) reads a file in small pieces, 20x slower
        key, table = marshal.loads(data)  # noqa: S302 - the image's own file, root's
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    return table if key == python_key() and isinstance(table, dict) else {}


def install(path: str = RECORD) -> int:
    """Compile the patterns recorded in `path` from their recorded codes; the number of
    patterns recorded (0: nothing changed)."""
    previous = _compiler.compile
    if getattr(previous, MARK, None):
        return 0
    table = read(path)
    if not table:
        return 0

    def compile(p, flags=0):  # noqa: A001 - stands in for re._compiler.compile
        found = table.get((p, flags)) if isinstance(p, (str, bytes)) else None
        if found is None:
            return previous(p, flags)
        return build(p, found)

    setattr(compile, MARK, "installed")
    compile.previous = previous
    _compiler.compile = compile
    return len(table)


def uninstall() -> None:
    """Put back the compile that install() replaced, and let the record go (the server
    calls this once it serves: the record has served its start)."""
    _compiler.compile = getattr(_compiler.compile, "previous", _compiler.compile)


# Runs in a new Python: lists every pattern a server's start compiles, into argv[1].
_LISTER = """
import marshal, sys
from re import _compiler
out = sys.argv[1]
seen = {}
stdlib = _compiler.compile
def listing(p, flags=0):
    if isinstance(p, (str, bytes)) and not flags & %(debug)d:
        seen.setdefault((p, flags), None)
    return stdlib(p, flags)
listing.%(mark)s = "recording"  # install() leaves it in place
_compiler.compile = listing
import scirepo_singleuser
scirepo_singleuser.set_up("--allow-root")  # the image build runs as root
with open(out, "wb") as f:
    marshal.dump(list(seen), f)
"""


def listed(user: str, hash_seed: str) -> set[tuple]:
    """(pattern, flags) of every pattern a server's start compiles, in a new process, as
    `user`, with a hub environment of its own (nothing is contacted) and a temporary
    home."""
    prefix = f"/user/{user}/"
    with tempfile.TemporaryDirectory(prefix="scirepo-regexes-") as home:
        env = {
            **os.environ,
            "HOME": home,
            "PYTHONHASHSEED": hash_seed,
            "JUPYTER_RUNTIME_DIR": os.path.join(home, "runtime"),
            "JUPYTERHUB_API_TOKEN": "none",
            "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
            "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:18888{prefix}",
            "JUPYTERHUB_USER": user,
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": f'["access:servers!server={user}/"]',
            "JUPYTERHUB_ROOT_DIR": home,
        }
        for key in ("JUPYTERHUB_ACTIVITY_URL", "JUPYTERHUB_DEFAULT_URL", "JUPYTER_CONFIG_DIR"):
            env.pop(key, None)
        out = os.path.join(home, "listed")
        code = _LISTER % {"debug": DEBUG, "mark": MARK}
        res = subprocess.run(  # noqa: S603 - this Python, our own code
            [sys.executable, "-c", code, out], env=env, cwd=home, capture_output=True, text=True
        )
        if res.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"the server did not start for the recording:\n{res.stderr[-3000:]}")
        with open(out, "rb") as f:
            return set(marshal.loads(f.read()))  # noqa: S302 - our own child's


def record(path: str = RECORD) -> int:
    """Write the codes of the patterns that both starts of STARTS compiled and that
    compile to the same pattern object from them; their number."""
    python_compile = getattr(_compiler.compile, "previous", _compiler.compile)
    common = set.intersection(*(listed(user, seed) for user, seed in STARTS))
    table = {}
    for pattern, flags in sorted(common, key=repr):
        found = parts(pattern, flags)
        if same(build(pattern, found), python_compile(pattern, flags)):
            table[pattern, flags] = found
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            marshal.dump((python_key(), table), f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(table)
