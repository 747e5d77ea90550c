"""Modules a server's start imports but does not use: their code runs at their first use.

Jupyter Server, JupyterLab and their dependencies import some modules at the top of theirs
that only a few requests, or a configuration scirepo does not set, ever use. Importing
them is on every start's way. While the server starts (`install()` is called first thing
when scirepo_singleuser is imported, `uninstall()` once it serves), the first import of a
module named in MODULES makes the module object without running its code: its code runs,
once, the first time anything reads or sets one of its attributes (a `from X import Y`
does), under a lock, so that two threads cannot run it twice. A module that something
does use at start is simply loaded then, as before.

Each of these stays unloaded until the server serves (the image test checks it), and
each is a pure Python package. From the interpreter's start to a server ready to serve,
in the base image, 8 starts each in turns: median 0.563 s with every module loaded, 0.439 s
with these deferred (79 ms less per pair, median). requests alone brings urllib3,
charset_normalizer and certifi.

Standard library only: this module is imported before anything else in the server.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import types

# Who imports each at start, and what uses it.
MODULES = {
    "arrow": "isoduration's parser (jsonschema); used to check a `duration` format",
    "babel": "jupyterlab_server's translations; used at JupyterLab's first translations call",
    "platformdirs": "jupyter_core.paths; used only with JUPYTER_PLATFORM_DIRS set",
    "requests": "jupyterlab_server's extension listings; used only when listings are set",
    "uri_template": "jsonschema's formats; used to check a `uri-template` format",
    "webcolors": "jsonschema's formats; used to check a `color` format",
    "websocket": "Jupyter Server's gateway client; used only with a kernel gateway",
}
# The finder in sys.meta_path carries this name.
MARK = "scirepo_deferred"

_lock = threading.RLock()
_running: set[str] = set()  # names whose code is running (in the thread that holds _lock)


def _load(module: types.ModuleType) -> None:
    """Run a deferred module's code, once; its first reader (or a second thread) waits."""
    name = types.ModuleType.__getattribute__(module, "__name__")
    with _lock:
        if type(module) is not _Deferred or name in _running:
            return  # loaded meanwhile, or its own code (or an import it makes) reads it
        _running.add(name)
        try:
            # Its own loader, which _Loader put back in its spec.
            types.ModuleType.__getattribute__(module, "__spec__").loader.exec_module(module)
            types.ModuleType.__setattr__(module, "__class__", types.ModuleType)
        finally:
            _running.discard(name)


class _Deferred(types.ModuleType):
    """A module whose code has not run yet: reading, setting or deleting any attribute
    runs it first."""

    def __getattribute__(self, attr: str):
        _load(self)
        return types.ModuleType.__getattribute__(self, attr)

    def __setattr__(self, attr: str, value) -> None:
        _load(self)
        types.ModuleType.__setattr__(self, attr, value)

    def __delattr__(self, attr: str) -> None:
        _load(self)
        types.ModuleType.__delattr__(self, attr)


class _Loader(importlib.abc.Loader):
    """Makes the module as its own loader would, and leaves its code for later."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return None  # the default module object, as for any module from source

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        module.__class__ = _Deferred


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # not found on the path, or not Python source: the usual import
        spec.loader = _Loader(spec.loader)
        return spec


def install(names=MODULES) -> bool:
    """Defer the first import of `names` from now on; False if already in place."""
    if any(getattr(f, MARK, False) for f in sys.meta_path):
        return False
    finder = _Finder(names)
    setattr(finder, MARK, True)
    sys.meta_path.insert(0, finder)
    return True


def uninstall() -> None:
    """Imports are as usual again; a module already deferred runs at its first use."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, MARK, False)]


def pending() -> list[str]:
    """Names of the modules deferred whose code has not run yet."""
    with _lock:
        return sorted(name for name, m in list(sys.modules.items()) if type(m) is _Deferred)
