"""The stub backend (RERANKER_BACKEND=stub): for tests and demos only, never the default."""

from __future__ import annotations

import re
import time
from typing import Sequence

import numpy as np

from shared.settings import Settings

from .runtime import Pairs

_WORD = re.compile(r"\w+")


class StubScorer:
    """Test/demo backend: the share of the query's words found in the sentence.

    Deterministic, so ordering is checkable; a delay per pair and one per character of each pair
    simulate compute, and `fail_on` a scorer that raises: a call with a sentence that contains it
    fails whole.
    """

    def __init__(self, settings: Settings) -> None:
        self.delay = settings.stub_delay_ms / 1000.0
        self.char_delay = settings.stub_char_delay_us / 1e6
        self.fail_on = settings.stub_fail_on
        self.info = {"model": "stub", "backend": "stub", "precision": "none", "threads": 1, "max_length": None}

    def score(self, pairs: Pairs, raw: Sequence[bool] | None = None, truncation_side: str = "right") -> np.ndarray:
        """The overlap share; it has no activation, so a raw score is the same number, and no window."""
        if self.fail_on is not None and any(self.fail_on in s for _, s in pairs):
            raise ValueError(f"stub told to fail on {self.fail_on!r} (RERANKER_STUB_FAIL_ON)")
        if self.delay or self.char_delay:
            chars = sum(len(q) + len(s) for q, s in pairs) if self.char_delay else 0
            time.sleep(self.delay * len(pairs) + self.char_delay * chars)
        return np.array([stub_score(q, s) for q, s in pairs], dtype=np.float32)

    def too_long(self, pairs: Pairs) -> list[bool]:
        return [False] * len(pairs)


def stub_score(query: str, sentence: str) -> float:
    q = set(_WORD.findall(query.lower()))
    s = set(_WORD.findall(sentence.lower()))
    return len(q & s) / len(q) if q else 0.0
