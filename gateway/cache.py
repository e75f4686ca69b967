"""The broker's score cache: an exact, bounded LRU from (model, mode, options, query, sentence) to the
float32 score a worker computed for that pair.

The key is a 16-byte BLAKE2b digest of all of that (a collision would take some 2^64 pairs), so an
entry's size does not depend on the texts and the byte bound is a bound on entries. A hit answers
the very float32 that was computed: scores are kept as Python floats, which hold every float32
exactly. The scheduler decides what is looked up and what is stored (gateway/scheduler.py).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Sequence

import numpy as np
import orjson

from shared.protocol import ScoreOptions, encode_options

# Bytes one entry takes in the broker's memory: the key (a 16-byte bytes object), the float and the
# OrderedDict's share, measured with tracemalloc from 1,000 to 700,000 entries (at most 189 bytes,
# 207 while the table grows).
ENTRY_BYTES = 208
DIGEST_BYTES = 16

# The READY fields that change what a worker's score for a pair is: the model and its mode.
MODE_FIELDS = ("model", "backend", "precision", "max_length")
Mode = tuple


def mode_of(info: dict) -> Mode:
    """A worker's mode, from its READY info: what must be equal for two workers' scores to be."""
    return tuple(info.get(k) for k in MODE_FIELDS)


class ScoreCache:
    """Scores by pair, least recently used first out once `max_bytes` is reached."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_bytes // ENTRY_BYTES
        self.entries: OrderedDict[bytes, float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def keys(self, mode: Mode, options: ScoreOptions, query: str, sentences: Sequence[str]) -> list[bytes]:
        """The key of each (query, sentence) pair scored in `mode` with `options`. What comes before
        the sentence is length-prefixed, so that no two different sets of parts hash the same text."""
        head = orjson.dumps([list(mode), encode_options(options)])
        q = query.encode("utf-8", "surrogatepass")
        prefix = hashlib.blake2b(digest_size=DIGEST_BYTES)
        prefix.update(b"%d:%s%d:%s" % (len(head), head, len(q), q))
        out = []
        for sentence in sentences:
            h = prefix.copy()
            h.update(sentence.encode("utf-8", "surrogatepass"))
            out.append(h.digest())
        return out

    def get(self, keys: Sequence[bytes]) -> np.ndarray:
        """The cached score of each key (float64, exact for the float32 stored), NaN where there is
        none (a NaN is never stored); hits become the most recent."""
        get = self.entries.get
        found = np.array([get(k, math.nan) for k in keys], dtype=np.float64)
        hits = np.flatnonzero(~np.isnan(found))
        touch = self.entries.move_to_end
        for i in hits.tolist():
            touch(keys[i])
        self.hits += len(hits)
        self.misses += len(keys) - len(hits)
        return found

    def missed(self, pairs: int) -> None:
        """Pairs sent to the workers without a look-up (the pool's workers disagree on their mode)."""
        self.misses += pairs

    def put(self, keys: Sequence[bytes], scores: np.ndarray) -> None:
        """Remember computed scores (finite ones only: the caller never passes a failed task's)."""
        entries = self.entries
        entries.update(zip(keys, scores.tolist()))
        touch = entries.move_to_end
        for key in keys:  # a key stored again (computed twice) becomes the most recent too
            touch(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def status(self) -> dict:
        return {"entries": len(self.entries), "bytes": len(self.entries) * ENTRY_BYTES, "max_bytes": self.max_bytes}
