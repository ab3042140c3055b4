"""glibc's malloc, set up for a long-running server that decodes large photos in many threads.

Two settings keep the server's memory flat (bench/soak.py; the investigation is in BENCHMARKS.md's soak
section):

- Few arenas. glibc gives each thread that contends for malloc an arena of its own, up to 8 per core, and
  each arena keeps what is freed in it. The cap must be set before the process has more than 8 arenas: glibc
  fixes its limit the first time it needs one past the 8th, so a cap set after a model has loaded (OpenVINO's
  and PyTorch's threads) is ignored. Call `tune_malloc()` first thing, before any model loads.
- Large buffers from `mmap`, always. glibc serves blocks above its mmap threshold with `mmap` and gives them
  back to the system on `free`, but it raises the threshold to the size of every such block freed (up to
  32 MB): after the first 2400-pixel photo (a 17 MB decode buffer), decode buffers come from the arenas, and
  every arena ends up keeping a 17 MB hole that small allocations pin down. A fixed threshold keeps them out.

And one setting that only counts from the start of a process, so the server restarts itself in place to
take it (`restart_with_malloc`): Python's own small objects from glibc's malloc too, not from pymalloc.

A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""glibc's `mallopt` parameters."""
ARENAS = 2
MMAP_THRESHOLD = 1 << 20
"""Blocks from 1 MB up are mapped and unmapped on their own: decode buffers, tensors of a photo, request
bodies. Below it (the default is 128 KB, raised by glibc as it goes) the arenas serve them."""


def tune_malloc(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap the malloc arenas at `arenas` and fix the mmap threshold at `mmap_threshold` bytes (the module's
    docstring says why). Returns whether the C library took both."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, arenas)) & bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))


def restart_with_malloc() -> None:
    """Restart this process in place (the same PID and command line) with `PYTHONMALLOC=malloc`, where the C
    library is glibc and PYTHONMALLOC is not set already (set it, to `pymalloc` say, to keep Python's
    default); not under a debugger. Call it first thing when the server starts, before the heavy imports.

    Why (bench/sessions.py, BENCHMARKS.md 12b): pymalloc takes memory in 1 MB arenas and gives an arena back
    only once every object in it has gone. A thousand visitors' sessions, made and forgotten, left 56 such
    arenas (56 MB) in the server, each held by a few objects that outlived the visits among thousands that
    did not; glibc's `malloc_trim` (`release_memory`) hands back any free 4 KB page, so the same visitors
    left 40 MB instead of 60 or more.
    """
    if os.environ.get("PYTHONMALLOC") or sys.gettrace() is not None or _libc_function("malloc_trim") is None:
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def release_memory() -> None:
    """Give freed memory back to the operating system.

    Dropping the last reference to a model frees its tensors, but glibc's allocator keeps large freed
    blocks inside the process for reuse, so the resident size would not come down; `malloc_trim` returns
    them. (A no-op where the C library has no `malloc_trim`.)
    """
    gc.collect()  # a model's hooks can form reference cycles
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def _libc_function(function: str) -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):
        return None
