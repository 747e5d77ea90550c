"""Kernel specs found where jupyter_client finds them, without importing IPython.

jupyter_client's KernelSpecManager looks for kernels in `jupyter_path("kernels")` and in
IPython's old place, `<IPython dir>/kernels`. To name that directory it imports IPython
(`IPython.paths.get_ipython_dir`) into the server process at JupyterLab's first
`/api/kernelspecs` call, which is on the way to every user's first page: about 35 ms of
the server's CPU, with the page's other calls waiting behind it, and the server's memory
grows by IPython. get_ipython_dir also creates `~/.ipython` as a side effect.

`KernelSpecs` looks in the same directories: `$IPYTHONDIR/kernels`, else
`~/.ipython/kernels`. It leaves out get_ipython_dir's fallbacks for IPython up to 1.x
(`~/.config/ipython`, before 2013) and for a home it cannot write (a new temporary
directory, which holds no kernels), and it creates nothing.
"""

from __future__ import annotations

import os

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_path


def ipython_kernel_dir() -> str:
    """Where IPython keeps kernels: `$IPYTHONDIR/kernels`, else `~/.ipython/kernels`."""
    ipython = os.environ.get("IPYTHONDIR") or os.path.join("~", ".ipython")
    return os.path.join(os.path.normpath(os.path.expanduser(ipython)), "kernels")


class KernelSpecs(KernelSpecManager):
    """KernelSpecManager whose default kernel directories need no IPython import."""

    def _kernel_dirs_default(self) -> list[str]:
        return [*jupyter_path("kernels"), ipython_kernel_dir()]
