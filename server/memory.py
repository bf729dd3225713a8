"""Keep the server's memory from creeping under large requests (glibc's allocator).

glibc serves a large allocation with mmap and returns it on free, but after such a free it raises
its mmap threshold (up to 32 MiB), so later request buffers of a few MiB come from the heap,
where freed ones fragment and stay. A 600 s soak with 8 MiB requests grew RSS by 60 %; with the
threshold fixed at 1 MiB the same traffic grew it by a few MiB (benchmarks/README.md, Soak).
Fixing the threshold also turns off glibc's dynamic adjustment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve allocations of `nbytes` or more with mmap; True when set. Does nothing with 0, when
    MALLOC_MMAP_THRESHOLD_ is set in the environment (the operator's choice wins), or off glibc."""
    if nbytes <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        log.debug("mallopt is not available; memory tuning skipped")
        return False
    return mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)) == 1
