"""The broker's score cache: exact, bounded in bytes, keyed by everything that changes a score.
How the scheduler uses it is tested in tests/test_scheduler.py; here the cache alone, and once
through the real service."""

import numpy as np
import orjson
import pytest

from gateway.cache import ENTRY_BYTES, ScoreCache, mode_of
from shared.protocol import Chunking, ScoreOptions
from worker.stub import stub_score

MODE = mode_of({"model": "m", "backend": "torch", "precision": "fp32", "max_length": 512, "pid": 7})


def keys(cache, *sentences, query="q", mode=MODE, options=ScoreOptions()):
    return cache.keys(mode, options, query, list(sentences))


def test_a_hit_is_the_very_float32_stored():
    cache = ScoreCache(1 << 20)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 1000, dtype=np.uint64).astype(np.uint32)
    scores = bits.view(np.float32)
    scores = scores[np.isfinite(scores)]  # every finite float32: subnormals, -0.0, the extremes
    scores = np.concatenate([scores, np.array([-0.0, 1e-45, 3.4028235e38, 0.1], np.float32)])
    k = keys(cache, *[f"s{i}" for i in range(len(scores))])
    cache.put(k, scores)
    found = cache.get(k)
    assert found.astype(np.float32).tobytes() == scores.tobytes()


def test_misses_are_nan_and_hits_and_misses_are_counted():
    cache = ScoreCache(1 << 20)
    cache.put(keys(cache, "a", "c"), np.array([0.25, 0.75], np.float32))
    found = cache.get(keys(cache, "a", "b", "c", "d"))
    assert found[0] == 0.25 and found[2] == 0.75 and np.isnan(found[[1, 3]]).all()
    cache.missed(5)
    assert (cache.hits, cache.misses) == (2, 7)


def test_the_byte_bound_evicts_the_least_recently_used():
    cache = ScoreCache(3 * ENTRY_BYTES + ENTRY_BYTES // 2)  # room for 3 pairs
    a, b, c, d = keys(cache, "a", "b", "c", "d")
    cache.put([a, b, c], np.array([1, 2, 3], np.float32))
    cache.get([a])  # a is used again: b is now the least recently used
    cache.put([d], np.array([4], np.float32))
    assert list(cache.entries) == [c, a, d]  # b is gone, c goes next
    assert cache.status() == {"entries": 3, "bytes": 3 * ENTRY_BYTES, "max_bytes": 3 * ENTRY_BYTES + ENTRY_BYTES // 2}
    assert cache.get([b, c]).tolist()[1] == 3 and np.isnan(cache.get([b])[0])


def test_a_pair_scored_again_becomes_the_most_recent():
    cache = ScoreCache(2 * ENTRY_BYTES)
    a, b, c = keys(cache, "a", "b", "c")
    cache.put([a, b], np.array([1, 2], np.float32))
    cache.put([a], np.array([1], np.float32))
    cache.put([c], np.array([3], np.float32))
    assert list(cache.entries) == [a, c]


def test_keys_differ_by_everything_that_changes_a_score_and_only_by_that():
    cache = ScoreCache(1 << 20)
    (base,) = keys(cache, "sentence")
    variants = [
        keys(cache, "sentence", query="q2"),
        keys(cache, "sentence2"),
        keys(cache, "sentence", mode=mode_of({"model": "m", "backend": "torch", "precision": "int8", "max_length": 512})),
        keys(cache, "sentence", mode=mode_of({"model": "m", "backend": "onnx", "precision": "fp32", "max_length": 512})),
        keys(cache, "sentence", mode=mode_of({"model": "m2", "backend": "torch", "precision": "fp32", "max_length": 512})),
        keys(cache, "sentence", mode=mode_of({"model": "m", "backend": "torch", "precision": "fp32", "max_length": 256})),
        keys(cache, "sentence", options=ScoreOptions(raw=True)),
        keys(cache, "sentence", options=ScoreOptions(truncate=False)),
        keys(cache, "sentence", options=ScoreOptions(truncation_side="left")),
        keys(cache, "sentence", options=ScoreOptions(chunk=Chunking())),
        keys(cache, "sentence", options=ScoreOptions(chunk=Chunking(overlap=32))),
        keys(cache, "sentence", options=ScoreOptions(chunk=Chunking(max_tokens=1024))),
    ]
    assert len({base, *(k for (k,) in variants)}) == len(variants) + 1
    # what does not change a score does not change the key: the worker's pid, say
    assert keys(cache, "sentence", mode=mode_of({"model": "m", "backend": "torch", "precision": "fp32",
                                                  "max_length": 512, "pid": 8})) == [base]
    assert len(base) == 16


def test_the_parts_of_a_key_cannot_run_into_each_other():
    cache = ScoreCache(1 << 20)
    assert keys(cache, "c", query="ab") != keys(cache, "bc", query="a")
    assert keys(cache, "", query="a") != keys(cache, "a", query="")


@pytest.mark.parametrize("texts", [["\ud800 lone surrogate"], ["ünïcödé ✓"], [""]])
def test_any_text_has_a_key(texts):
    cache = ScoreCache(1 << 20)
    assert len(keys(cache, *texts, query=texts[0])[0]) == 16


def test_a_repeated_request_is_answered_with_the_same_bytes_and_no_worker_scores_it(service_factory):
    svc = service_factory().start(workers=1)
    body = {"query": "red apple pie", "sentences": ["red apple", "green pie", "nothing", "apple pie recipe"],
            "ids": [10, 11, 12, 13]}
    first = svc.http.post("/rerank", json=body)
    scored = svc.ready()["pool"][0]["pairs"]
    again = svc.http.post("/rerank", json=body)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert scored == 4 and svc.ready()["pool"][0]["pairs"] == 4  # the worker scored nothing the second time
    more = svc.http.post("/rerank", json={**body, "sentences": body["sentences"] + ["apple"], "ids": [10, 11, 12, 13, 14]})
    assert more.status_code == 200 and svc.ready()["pool"][0]["pairs"] == 5  # only the new sentence
    results = [{"id": i, "score": np.float32(stub_score(body["query"], s))}
               for i, s in zip(range(10, 15), body["sentences"] + ["apple"])]
    results.sort(key=lambda r: r["score"], reverse=True)
    assert more.content == orjson.dumps({"results": results}, option=orjson.OPT_SERIALIZE_NUMPY)
