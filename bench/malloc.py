"""Keep glibc's malloc from handing memory back to the kernel between calls.

By default glibc returns the top of its heap to the kernel once more than
128 KB is free there (``M_TRIM_THRESHOLD``), and serves blocks above a moving
threshold with fresh ``mmap`` calls. A benchmark call that allocates a
megabyte then pays for faulting it in anew every time, and whether it does
depends on what ran before: the same ``b"".join`` was measured at 0.1 ms and
at 0.5 ms in one minute. Raising both thresholds makes such calls cost what
their copying costs. The HTTP benchmark can run its servers this way too, by
environment (``MALLOC_*`` variables, read when a process starts).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 512 * 1024 * 1024
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit
ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
}


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
