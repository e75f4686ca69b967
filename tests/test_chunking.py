"""Chunked scoring of long texts (worker/chunking.py, the chunk branch of worker/jobs.py): the windows, and on
a tiny real model, that a relevant passage deep in a long text wins under chunking and not under truncation,
that short texts score exactly as without chunking, and that chunked requests merge across workers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from devkit.models import sample_text
from shared.protocol import Chunking, ScoreOptions, Task
from shared.settings import Settings
from worker.chunking import Chunker, spans
from worker.jobs import score_job
from worker.stub import StubScorer

CHUNK = ScoreOptions(chunk=Chunking(overlap=64))


# -- windows --------------------------------------------------------------------------------

@pytest.mark.parametrize("limit, room, overlap", [(100, 30, 10), (62, 22, 6), (30, 30, 5), (31, 30, 0),
                                                  (1000, 509, 64), (7, 16, 64)])
def test_spans_cover_the_tokens_within_the_room_and_overlap(limit, room, overlap):
    starts = list(range(0, limit, 3))  # a word every 3 tokens
    out = spans(starts, limit, room, overlap)
    assert out[0][0] == 0 and out[-1][1] == limit
    for (a, b), (c, d) in zip(out, out[1:]):
        assert c > a and c <= b, "no gap, always progress"
        assert b - c <= max(overlap, 0) + 3
    assert all(0 < b - a <= room for a, b in out)
    assert all(a in starts for a, _ in out)


def test_a_word_longer_than_the_room_is_cut():
    assert spans([0, 50], 60, 20, 5) == [(0, 20), (15, 35), (30, 50), (45, 60)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_windows_fit_the_model_beside_the_query_and_cover_the_text(tokenizer):
    rng = random.Random(1)
    query, short, long = sample_text(rng, 8), sample_text(rng, 30), sample_text(rng, 2000)
    windows = Chunker(tokenizer, 512).windows(query, [short, long], Chunking(overlap=64))
    assert windows[0] == [short]  # fits whole: the text itself
    assert len(windows[1]) > 4
    for w in windows[1]:
        assert len(tokenizer(query, w)["input_ids"]) <= 512
        assert w.strip() in long
    assert long.startswith(windows[1][0].strip()) and long.endswith(windows[1][-1])
    for a, b in zip(windows[1], windows[1][1:]):  # consecutive windows share words
        assert a.split()[-1] in b.split()[:80]


def test_max_tokens_caps_the_windows(tokenizer):
    rng = random.Random(2)
    query, long = sample_text(rng, 8), sample_text(rng, 2000)
    chunker = Chunker(tokenizer, 512)
    capped = chunker.windows(query, [long], Chunking(overlap=64, max_tokens=600))[0]
    assert [len(tokenizer(w, add_special_tokens=False)["input_ids"]) <= 509 for w in capped] == [True, True]
    assert sum(len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in capped) <= 600 + 64 + 8
    head = chunker.windows(query, [long], Chunking(overlap=64, max_tokens=100))[0]
    assert len(head) == 1 and abs(len(tokenizer(head[0], add_special_tokens=False)["input_ids"]) - 100) <= 2


def test_a_scorer_without_a_window_scores_texts_whole():
    stub = StubScorer(Settings(backend="stub"))
    tasks = [Task("red apple", ["a red apple " * 500, "car"], CHUNK)]
    scores, failures = score_job(stub, tasks)
    assert failures == [] and scores.tolist() == [1.0, 0.0]


# -- on a tiny real model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer(conditioned_model):
    from worker.scorer import CrossEncoderScorer

    return CrossEncoderScorer(Settings(model=str(conditioned_model), num_threads=1))


def repeated(count, snippet: str, tokens: int) -> str:
    """`snippet` repeated to about `tokens` tokens (`count` counts a text's tokens)."""
    words = snippet.split()
    per = count(snippet)
    return " ".join(words * (tokens // per + 1))


@pytest.fixture(scope="module")
def long_passage(scorer):
    """A query; a long text A whose first 2,000 tokens are filler and whose passage at token ~2,000 is what
    the model finds relevant; a short text B that the model ranks between the filler and the passage; a text
    C of filler alone, as long as A.

    The random tiny model has no notion of relevance, so the fixture measures one: of 24 snippets, each
    repeated to fill a window, the one the model scores highest is the passage and the lowest the filler.
    """
    rng = random.Random(7)
    chunker = Chunker(scorer.runtime.tokenizer, scorer.runtime.max_length)
    count = lambda text: len(chunker.tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    query = sample_text(rng, 8)
    snippets = [sample_text(rng, 30) for _ in range(24)]
    windows = scorer.score([(query, repeated(count, s, 450)) for s in snippets])
    filler, passage = snippets[int(np.argmin(windows))], snippets[int(np.argmax(windows))]
    head = repeated(count, filler, 2000)
    a = " ".join([head, repeated(count, passage, 700), repeated(count, filler, 200)])
    c = repeated(count, filler, count(a))
    middle = (windows.min() + windows.max()) / 2
    shorts = [sample_text(rng, 40) for _ in range(40)]
    b = shorts[int(np.argmin(np.abs(scorer.score([(query, s) for s in shorts]) - middle)))]
    at = count(head)
    assert 1900 <= at <= 2200, at
    return query, [a, b, c]


@pytest.mark.model
def test_a_relevant_passage_at_token_2000_wins_under_chunking_not_truncation(scorer, long_passage, one_thread):
    query, texts = long_passage
    truncated, _ = score_job(scorer, [Task(query, texts)])
    chunked, failures = score_job(scorer, [Task(query, texts, CHUNK)])
    assert failures == []
    assert np.argmax(chunked) == 0, chunked        # A first: its passage is found
    assert np.argmax(truncated) != 0, truncated    # truncated, A is its filler head
    assert chunked[2] < chunked[1], chunked        # the filler alone does not win: the passage does
    assert chunked[1] == truncated[1]              # the short text: as before


@pytest.mark.model
def test_raw_chunked_scores_are_the_best_windows_logits(scorer, long_passage, one_thread):
    query, texts = long_passage
    raw, _ = score_job(scorer, [Task(query, texts, ScoreOptions(raw=True, chunk=Chunking(overlap=64)))])
    chunked, _ = score_job(scorer, [Task(query, texts, CHUNK)])
    windows = Chunker(scorer.runtime.tokenizer, scorer.runtime.max_length).windows(query, texts, Chunking(64))
    for i, ws in enumerate(windows):
        logits = scorer.score([(query, w) for w in ws], raw=[True] * len(ws))
        np.testing.assert_allclose(raw[i], logits.max(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), chunked, rtol=0, atol=1e-5)


@pytest.mark.model
def test_short_texts_score_exactly_as_without_chunking(scorer, one_thread):
    rng = random.Random(3)
    query = sample_text(rng, 8)
    texts = [sample_text(rng, rng.randint(3, 300)) for _ in range(20)]
    plain, _ = score_job(scorer, [Task(query, texts)])
    chunked, _ = score_job(scorer, [Task(query, texts, CHUNK)])
    assert np.array_equal(plain, chunked)  # bit for bit
    # Merged with another request in one job, the batches differ, and with them the float rounding: as for
    # any two batchings of the same pairs, not because of chunking.
    mixed, _ = score_job(scorer, [Task(query, texts), Task(query, texts, CHUNK)])
    np.testing.assert_allclose(mixed[20:], mixed[:20], rtol=0, atol=1e-6)


@pytest.mark.model
def test_chunked_requests_merge_across_two_workers(service_factory, conditioned_model, long_passage):
    query, texts = long_passage
    documents = [texts[0], texts[1], texts[2], texts[0][:9000], texts[2][:9000], texts[1] + " " + texts[1]]
    svc = service_factory(RERANKER_MAX_BATCH_PAIRS="2", RERANKER_MIN_SPLIT_PAIRS="1", RERANKER_LONG_TEXTS="chunk")
    svc.start_gateway()
    for _ in range(2):
        svc.start_worker(RERANKER_BACKEND="torch", RERANKER_MODEL=str(conditioned_model), NUM_THREADS="1")
    svc.wait_ready(2, timeout=120)  # torch workers take their time to start on a busy machine
    body = {"query": query, "texts": documents, "raw_scores": True}
    two = svc.http.post("/tei/rerank", json=body)
    assert two.status_code == 200, two.text
    pool = svc.ready()["pool"]
    assert all(w["pairs"] > 0 for w in pool), pool  # the documents were split over both
    svc.workers[1].kill()
    svc.wait_ready(1)
    one = svc.http.post("/tei/rerank", json=body)
    by_index = {x["index"]: x["score"] for x in two.json()}
    alone = {x["index"]: x["score"] for x in one.json()}
    assert [x["index"] for x in two.json()][0] == 0  # the passage wins through the service too
    np.testing.assert_allclose([by_index[i] for i in range(6)], [alone[i] for i in range(6)], rtol=0, atol=1e-5)
    truncated = svc.http.post("/tei/rerank", json={**body, "chunk": False}).json()
    assert truncated[0]["index"] != 0
