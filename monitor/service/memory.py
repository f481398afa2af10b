"""The process heap: at most two glibc arenas for all the job threads, large arrays mapped apart, the heap trimmed
after replay and evaluation."""

from __future__ import annotations

import ctypes
from functools import cache

GLIBC_M_ARENA_MAX = -8
GLIBC_M_MMAP_THRESHOLD = -3
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 128 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist on glibc only
    except (OSError, AttributeError):
        return None  # not glibc: its allocator's habits do not apply
    return libc


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS glibc heaps for all threads (as MALLOC_ARENA_MAX=2 would). The jobs run on
    a thread pool, and each thread would otherwise get a heap of its own that keeps what replay's tensors
    and the evaluations' frames free. In the soak test's traffic (24 simulated minutes) the daemon peaked
    at about 1,100 MB resident without the limit and 930 MB with it."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(GLIBC_M_ARENA_MAX, MALLOC_ARENAS)


def map_large_allocations() -> None:
    """Allocations of MMAP_THRESHOLD bytes or more get pages of their own and go back to the OS when freed
    (as MALLOC_MMAP_THRESHOLD_=131072 would). glibc otherwise raises the threshold after the first large
    free, up to 32 MiB, and serves column arrays from the heap, where the holes they leave outlast them:
    evaluating 1,000,000 results peaked at 494 MB resident loading its columns without this, 372 MB with it."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_heap() -> None:
    """Hands freed heap memory back to the OS (glibc's malloc_trim), after replay drains and evaluations."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
