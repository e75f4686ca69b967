"""How one request's pairs are grouped into forward passes.

The request is tokenized once; pairs are sorted by token length and the sorted run is cut into batches
where the padding saved pays for another forward pass. On W30 with mxbai-base's shape this computes ~27%
fewer tokens than predict(batch_size=32), which pads the whole request to its longest pair
(docs/precision.md).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SINGLE_PENALTY = 1e12
BATCH_OVERHEAD_TOKENS = 32
"""What one more forward pass costs, in tokens (dispatch, and copying DeBERTa-v2's projected relative-position
table for every row of the batch; the projection itself is done once, worker/relpos.py). Padding is cut off
into a separate batch only where that saves more than this. Measured best of 0/16/32/64/96 on W30 and two
merged W30s with mxbai-base's shape, 2 threads (96 was right before the projection was memoised)."""


def plan_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int,
                 overhead: int = BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Pair indices grouped for forward passes, in request-independent, length-sorted order.

    Pairs are sorted longest first and cut into runs; each run is padded to its first (longest) pair.
    The cuts minimise the padded tokens computed plus `overhead` tokens per forward pass, subject to at
    most `batch_size` pairs and `batch_tokens` padded tokens a batch (a single pair longer than the
    budget still runs alone), and avoiding batches of one pair where possible. One dynamic programme
    over the sorted lengths, O(n x batch size).
    """
    n = len(lengths)
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")  # ties keep request order
    ls = np.maximum(np.asarray(lengths, dtype=np.int64)[order], 1)
    # Alone only where the budget or batch size leaves no choice (or the request is one pair).
    single_penalised = (n > 1) & (batch_size > 1) & (2 * ls <= batch_tokens)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        lo = max(0, j - batch_size)
        i = np.arange(lo, j)
        size = j - i
        allowed = (size * ls[lo:j] <= batch_tokens) | (size == 1)
        cost = np.where(allowed, best[lo:j] + overhead + size * ls[lo:j], np.inf)
        # A pair alone takes another code path (no batch dimension to vectorise over) whose float
        # rounding differs from predict's batched one, so batches of one are a last resort.
        cost = np.where((size == 1) & single_penalised[lo:j], cost + SINGLE_PENALTY, cost)
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], lo + k
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[cut[j]:j].tolist())
        j = int(cut[j])
    return out[::-1]
