"""Giving memory the process no longer uses back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_free_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the system (`malloc_trim`).

    A backfill trains pairs in threads: glibc gives each thread its own arenas and keeps their freed
    pages, so without this the process keeps growing by tens of MB per pair although nothing is held.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        ctypes.CDLL(libc_name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to trim
        return
