"""worker.stub: the test/demo scorer, and load_scorer choosing it."""

from __future__ import annotations

import numpy as np
import pytest

from shared.settings import Settings
from worker.scorer import load_scorer
from worker.stub import StubScorer, stub_score


def test_stub_score_is_the_share_of_query_words_found():
    assert stub_score("Red apple pie", "an apple, red as a rose") == 2 / 3
    assert stub_score("red apple", "RED APPLE") == 1.0
    assert stub_score("red apple", "green pear") == 0.0
    assert stub_score("...", "anything") == 0.0  # a query without words


def test_stub_scorer_scores_in_request_order_as_float32():
    scorer = load_scorer(Settings(backend="stub"))
    assert isinstance(scorer, StubScorer) and scorer.info["backend"] == "stub"
    pairs = [("red apple", "green pear"), ("red apple", "red apple"), ("red apple", "a red car")]
    got = scorer.score(pairs)
    assert got.dtype == np.float32
    assert got.tolist() == [0.0, 1.0, 0.5]
    assert scorer.score([]).shape == (0,)


def test_stub_delay_is_per_pair(monkeypatch):
    from worker import stub

    slept: list[float] = []
    monkeypatch.setattr(stub.time, "sleep", slept.append)
    StubScorer(Settings(backend="stub", stub_delay_ms=20)).score([("a", "a")] * 5)
    StubScorer(Settings(backend="stub")).score([("a", "a")] * 5)
    assert slept == [pytest.approx(5 * 0.020)]
