"""Give the memory of a big job back to the system.

Scoring long texts (tokenizing megabytes of text, the attention tensors of 512-token batches) takes
hundreds of MB, and glibc's malloc keeps part of it in the process once freed. Measured on the tiny
test model, 2 threads: a 7.4 MB request of 1,024 texts at 512 tokens (16 jobs of 64) peaked 250 MB
above the worker's baseline and left it 36 MB above; with malloc_trim after each job of long texts,
10 MB above. One job of 300 such texts scored in one piece left 280 MB, and 18 MB after malloc_trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("reranker.worker")

BIG_JOB_BYTES = 64 << 10  # trim after a JOB body this large: long texts, whose batches are big

_libc = None


def trim_heap() -> bool:
    """Return free heap pages to the system (glibc malloc_trim, every arena); False where there is
    no glibc (musl, macOS): nothing to do there."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 - present in glibc only
        except (OSError, AttributeError):
            _libc = False
            log.info("no glibc malloc_trim here: memory freed after big jobs stays with the process")
    return bool(_libc) and bool(_libc.malloc_trim(0))
