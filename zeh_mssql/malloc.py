"""Keep glibc's malloc from handing memory back to the kernel after every response.

By default glibc returns the top of its heap to the kernel once more than
128 KB is free there (``M_TRIM_THRESHOLD``), and serves blocks above a moving
threshold with fresh ``mmap`` calls. A server building megabyte responses then
faults that memory in anew for every page: the HTTP benchmark measured a third
of the server's CPU per page going there. Raising both thresholds keeps the
memory in the process; the retained amount is bounded by ``TRIM_THRESHOLD``
and by the largest response. The shipped gunicorn config does this in every
worker; ``ZEH_MSSQL_KEEP_HEAP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 64 * 1024 * 1024
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit


def keep_heap() -> bool:
    """Raise this process's trim and mmap thresholds; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
