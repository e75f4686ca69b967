"""The real gateway (gunicorn + FastAPI), broker and stub workers, over real sockets."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import numpy as np
import orjson
import pytest

from devkit.procs import children
from worker.stub import stub_score

QUERY = "red apple pie recipe"
SENTENCES = ["green pie", "a recipe for red apple pie", "red car", "apple", "nothing here", "red apple"]


def expected_body(query: str, sentences: list[str], ids: list[int]) -> bytes:
    """What the original service returned: sorted by score (stable), float32 scores via orjson."""
    results = [{"id": i, "score": np.float32(stub_score(query, s))} for i, s in zip(ids, sentences)]
    results.sort(reverse=True, key=lambda r: r["score"])
    return orjson.dumps({"results": results}, option=orjson.OPT_SERIALIZE_NUMPY)


# -- the contract ----------------------------------------------------------------

def test_rerank_is_byte_compatible_sorted_and_keeps_ids(stub_service):
    ids = [12, 7, 99, -3, 0, 5]
    r = stub_service.rerank(QUERY, SENTENCES, ids)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.content == expected_body(QUERY, SENTENCES, ids)
    results = r.json()["results"]
    assert [x["id"] for x in results][:2] == [7, 5]  # 4/4 words, then 3/4 ("red apple")
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)


def test_ties_keep_request_order(stub_service):
    sentences = ["pie", "apple", "recipe", "red"]  # one word each: all tie at 0.25
    r = stub_service.rerank(QUERY, sentences, [4, 3, 2, 1])
    assert [x["id"] for x in r.json()["results"]] == [4, 3, 2, 1]


def test_empty_sentences_answer_without_workers(service_factory):
    svc = service_factory()
    svc.start_gateway()  # no worker at all
    r = svc.rerank("q", [], [])
    assert r.status_code == 200
    assert r.content == b'{"results":[]}'


def test_large_request_is_split_and_merged_in_order(stub_service):
    sentences = [f"apple {'pie ' * (i % 4)}{i}" for i in range(50)]  # > RERANKER_MAX_BATCH_PAIRS? no: 50 <= 64
    ids = list(range(1000, 1050))
    r = stub_service.rerank("apple pie 7", sentences, ids)
    assert r.content == expected_body("apple pie 7", sentences, ids)


# -- bad input --------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"query": "q", "sentences": ["a", "b"], "ids": [1]}, "ids"),
    ({"query": "q", "sentences": ["a"], "ids": [1, 2]}, "ids"),
    ({"query": "q", "sentences": ["a"], "ids": ["1"]}, "ids"),
    ({"query": "q", "sentences": ["a"], "ids": [1.5]}, "ids"),
    ({"query": "q", "sentences": ["a"], "ids": [True]}, "ids"),
    ({"sentences": ["a"], "ids": [1]}, "query"),
    ({"query": "q", "ids": [1]}, "sentences"),
    ({"query": "q", "sentences": ["a"]}, "ids"),
    ({"query": 5, "sentences": ["a"], "ids": [1]}, "query"),
    ({"query": "q", "sentences": "a", "ids": [1]}, "sentences"),
    ({"query": "q", "sentences": [None], "ids": [1]}, "sentences"),
])
def test_malformed_requests_get_422_naming_the_field(stub_service, body, field):
    r = stub_service.http.post("/rerank", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_malformed_json_gets_422(stub_service):
    r = stub_service.http.post("/rerank", content=b'{"query": "q", "sentences": [', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "json" in r.text.lower()


BROWSER = {"Origin": "https://search.example"}  # a request with an Origin goes through the full FastAPI stack
JSON = {"content-type": "application/json"}


def post_both_ways(svc, content, headers=JSON):
    """The same request through the fast path and through the FastAPI route; `content` may be a list
    of chunks (sent chunked)."""
    def body():
        return iter(content) if isinstance(content, list) else content
    fast = svc.http.post("/rerank", content=body(), headers=headers)
    full = svc.http.post("/rerank", content=body(), headers={**headers, **BROWSER})
    return fast, full


def assert_same_answer(fast, full):
    assert full.headers["access-control-allow-origin"] in ("*", BROWSER["Origin"])
    assert "access-control-allow-origin" not in fast.headers
    assert (fast.status_code, fast.content) == (full.status_code, full.content)
    for header in ("content-type", "retry-after"):
        assert fast.headers.get(header) == full.headers.get(header), header
    assert fast.headers["content-type"] == "application/json"


@pytest.mark.parametrize("content, headers, status", [
    pytest.param(orjson.dumps({"query": QUERY, "sentences": SENTENCES, "ids": [1, 2, 3, 4, 5, 6]}), JSON, 200,
                 id="w6"),
    pytest.param(orjson.dumps({"query": "q", "sentences": [], "ids": []}), JSON, 200, id="empty"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]}', {}, 200, id="no-content-type"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1], "extra": true}', JSON, 200, id="extra-field"),
    pytest.param(b'\xef\xbb\xbf{"query": "q", "sentences": ["a"], "ids": [1]}', JSON, 200, id="bom"),
    # 422: the request model refuses it
    pytest.param(b'{"query": "q", "sentences": ["a", "b"], "ids": [1]}', JSON, 422, id="ids-short"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1.0]}', JSON, 422, id="id-float"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [18446744073709551616]}', JSON, 422,
                 id="id-over-64-bits"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [NaN]}', JSON, 422, id="id-nan"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1e400]}', JSON, 422, id="id-inf"),
    pytest.param(b'{"query": "q", "sentences": ["a"]}', JSON, 422, id="ids-missing"),
    pytest.param(b'{"query": "q", "sentences": [null], "ids": [1]}', JSON, 422, id="sentence-null"),
    pytest.param(b'["q", ["a"], [1]]', JSON, 422, id="not-an-object"),
    pytest.param(b'{"query": "q", "sentences": ["\\ud800"], "ids": [1]}', JSON, 422, id="lone-surrogate"),
    pytest.param(b'{"query": "\\udfff", "sentences": ["a"], "ids": [1]}', JSON, 422, id="lone-surrogate-query"),
    # 422: not JSON
    pytest.param(b'{"query": "q", "sentences": [', JSON, 422, id="truncated"),
    pytest.param(b'', JSON, 422, id="empty-body"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]} x', JSON, 422, id="trailing-garbage"),
    # 400: not UTF-8 text
    pytest.param(b'{"query": "\xff\xfe", "sentences": [], "ids": []}', JSON, 400, id="not-utf8"),
    # 413: over a limit
    pytest.param(orjson.dumps({"query": "q", "sentences": ["s"] * 51, "ids": list(range(51))}), JSON, 413,
                 id="too-many-sentences"),
    pytest.param(orjson.dumps({"query": "q", "sentences": ["x" * 501], "ids": [1]}), JSON, 413,
                 id="sentence-too-long"),
    pytest.param(orjson.dumps({"query": "q" * 501, "sentences": ["x"], "ids": [1]}), JSON, 413, id="query-too-long"),
    pytest.param(b" " * 20001, JSON, 413, id="body-too-large"),
    pytest.param([b" " * 15000, b" " * 15000], JSON, 413, id="chunked-too-large"),
])
def test_fast_path_answers_as_the_fastapi_route_does(stub_service, content, headers, status):
    fast, full = post_both_ways(stub_service, content, headers)
    assert_same_answer(fast, full)
    assert fast.status_code == status, fast.text


def test_lone_surrogates_get_422_naming_the_field(stub_service):
    r = stub_service.http.post("/rerank", content=b'{"query": "q", "sentences": ["\\ud800"], "ids": [1]}',
                               headers=JSON)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "sentences"] and "surrogate" in error["msg"]


def test_a_body_that_is_not_text_gets_400_not_500(stub_service):
    r = stub_service.http.post("/rerank", content=b'{"query": "\xff\xfe", "sentences": [], "ids": []}',
                               headers=JSON)
    assert r.status_code == 400 and r.json() == {"detail": "There was an error parsing the body"}


def test_ids_beyond_64_bits_get_422_not_500(stub_service):
    r = stub_service.rerank("q", ["a"], [2**64])
    assert r.status_code == 422 and "ids" in r.text
    r = stub_service.rerank("q", ["a", "b"], [2**64 - 1, -(2**63)])
    assert r.status_code == 200 and {x["id"] for x in r.json()["results"]} == {2**64 - 1, -(2**63)}


def test_invalid_json_gets_422_without_echoing_the_body(stub_service):
    content = b'{"query": "' + b"x" * 5000 + b'", "sentences": ['
    r = stub_service.http.post("/rerank", content=content, headers=JSON)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert len(r.content) < 1000


def test_limits_get_413_with_the_limit_named(stub_service):
    r = stub_service.rerank("q", ["s"] * 51)
    assert r.status_code == 413 and "50" in r.json()["detail"] and "RERANKER_MAX_SENTENCES" in r.json()["detail"]
    r = stub_service.rerank("q", ["x" * 501])
    assert r.status_code == 413 and "500" in r.json()["detail"]
    r = stub_service.rerank("q" * 501, ["x"])
    assert r.status_code == 413
    r = stub_service.http.post("/rerank", content=b" " * 20001, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "20000" in r.json()["detail"]
    # Chunked body without content-length is counted as it streams.
    r = stub_service.http.post("/rerank", content=iter([b" " * 15000, b" " * 15000]),
                               headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert stub_service.rerank("q", ["s"] * 50).status_code == 200  # at the limit: fine


# -- routes ----------------------------------------------------------------------

def test_docs_openapi_health_ready_info(stub_service):
    assert stub_service.get("/health").json() == {"status": "ok"}
    spec = stub_service.get("/openapi.json").json()
    assert "/rerank" in spec["paths"]
    body_ref = spec["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert set(spec["components"]["schemas"][body_ref.split("/")[-1]]["required"]) == {"query", "sentences", "ids"}
    docs = stub_service.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    ready = stub_service.get("/ready")
    assert ready.status_code == 200 and ready.json()["workers"] == 2
    assert stub_service.get("/info").json()["max_sentences"] == 50


def test_cors_preflight(stub_service):
    r = stub_service.http.options("/rerank", headers={
        "Origin": "https://search.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://search.example")
    assert "POST" in r.headers["access-control-allow-methods"]


def test_cors_origins_are_configurable(service_factory):
    svc = service_factory(RERANKER_CORS_ORIGINS="https://a.example")
    svc.start_gateway()
    ok = svc.http.options("/rerank", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    bad = svc.http.options("/rerank", headers={"Origin": "https://b.example", "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://a.example"
    assert bad.status_code == 400


# -- the pool ---------------------------------------------------------------------

def test_concurrent_requests_spread_over_workers(service_factory):
    svc = service_factory().start(workers=2, RERANKER_STUB_DELAY_MS="20")
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: svc.rerank(f"apple {i}", [f"apple {i}", "pear", "apple"]), range(16)))
    assert all(r.status_code == 200 for r in responses)
    for i, r in enumerate(responses):  # each answer is its own request's
        assert r.json()["results"][0] == {"id": 0, "score": 1.0}
    pool_state = svc.ready()["pool"]
    assert len(pool_state) == 2
    assert all(w["jobs"] > 0 for w in pool_state), pool_state


def test_big_request_fans_out_over_idle_workers(service_factory):
    svc = service_factory(RERANKER_MAX_BATCH_PAIRS="8").start(workers=3, RERANKER_STUB_DELAY_MS="10")
    sentences = [f"word{i % 7} apple" for i in range(48)]
    r = svc.rerank("apple word3", sentences)
    assert r.content == expected_body("apple word3", sentences, list(range(48)))
    assert all(w["pairs"] >= 8 for w in svc.ready()["pool"]), svc.ready()


def test_worker_killed_mid_request_is_redispatched(service_factory):
    svc = service_factory().start(workers=1, RERANKER_STUB_DELAY_MS="300")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(svc.rerank, QUERY, SENTENCES)  # 6 pairs x 300 ms on the only worker
        svc.wait_for(lambda: svc.ready()["pool"][0]["busy"], 5, "the worker to be busy")
        svc.start_worker()  # a fast one, idle
        svc.wait_ready(2)
        svc.workers[0].kill()
        r = pending.result(10)
    assert r.status_code == 200
    assert r.content == expected_body(QUERY, SENTENCES, list(range(6)))
    svc.wait_ready(1)


def test_no_worker_gives_503_fast(service_factory):
    svc = service_factory()
    svc.start_gateway()
    assert svc.get("/ready").status_code == 503
    t0 = time.monotonic()
    r = svc.rerank(QUERY, SENTENCES)
    elapsed = time.monotonic() - t0
    assert r.status_code == 503 and "worker" in r.json()["detail"] and r.headers["retry-after"] == "1"
    assert elapsed < 4, elapsed  # grace is 1.5 s: fails fast, never hangs
    assert_same_answer(*post_both_ways(svc, orjson.dumps({"query": "q", "sentences": ["a"], "ids": [1]})))


def test_all_workers_gone_gives_503(service_factory):
    svc = service_factory().start(workers=2)
    for proc in svc.workers:
        proc.kill()
    svc.wait_ready(0)
    r = svc.rerank(QUERY, SENTENCES)
    assert r.status_code == 503


def test_stuck_worker_gives_504_at_the_timeout(service_factory):
    svc = service_factory(RERANKER_REQUEST_TIMEOUT="1.5").start(workers=1, RERANKER_STUB_DELAY_MS="5000")
    t0 = time.monotonic()
    r = svc.rerank(QUERY, ["one sentence"])
    elapsed = time.monotonic() - t0
    assert r.status_code == 504 and "1.5" in r.json()["detail"]
    assert 1.4 < elapsed < 4, elapsed


def test_overload_and_timeout_answer_alike_both_ways_in(service_factory):
    svc = service_factory(RERANKER_MAX_QUEUED="1", RERANKER_REQUEST_TIMEOUT="2")
    svc.start(workers=1, RERANKER_STUB_DELAY_MS="5000")
    content = orjson.dumps({"query": "q", "sentences": ["a"], "ids": [1]})
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(svc.rerank, "q", ["a"])  # holds the one place until it times out
        svc.wait_for(lambda: svc.ready()["running"] == 1, 5, "the first request to be in flight")
        fast, full = post_both_ways(svc, content)
        assert pending.result(10).status_code == 504
    assert fast.status_code == 429 and fast.headers["retry-after"] == "1"
    assert_same_answer(fast, full)
    fast, full = post_both_ways(svc, content)  # one at a time: the worker is still stuck
    assert fast.status_code == 504 and "2 s" in fast.json()["detail"]
    assert_same_answer(fast, full)


def test_queue_limit_gives_429(service_factory):
    svc = service_factory(RERANKER_MAX_QUEUED="2").start(workers=1, RERANKER_STUB_DELAY_MS="400")
    with cf.ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda i: svc.rerank("q", ["a"]).status_code, range(6)))
    assert 429 in codes and 200 in codes, codes


def test_several_gateway_processes_share_the_broker(service_factory):
    svc = service_factory(WEB_CONCURRENCY="2").start(workers=1)
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: svc.rerank(QUERY, SENTENCES, [i] * 6), range(24)))
    assert all(r.content == expected_body(QUERY, SENTENCES, [i] * 6) for i, r in enumerate(responses))


def test_broker_crash_is_restarted_and_workers_reconnect(service_factory):
    from pathlib import Path
    svc = service_factory().start(workers=2)
    brokers = [k for k in children(svc.gateway.pid)
               if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert len(brokers) == 1, brokers
    os.kill(brokers[0], signal.SIGKILL)
    svc.wait_for(lambda: svc.ready().get("workers") == 2 and brokers[0] not in children(svc.gateway.pid),
                 20, "a new broker with both workers back")
    r = svc.rerank(QUERY, SENTENCES)
    assert r.content == expected_body(QUERY, SENTENCES, list(range(6)))


def test_sigterm_lets_a_worker_finish_its_job(service_factory):
    svc = service_factory().start(workers=1, RERANKER_STUB_DELAY_MS="200")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(svc.rerank, QUERY, SENTENCES)
        svc.wait_for(lambda: svc.ready()["pool"][0]["busy"], 5, "the worker to be busy")
        svc.workers[0].terminate()
        r = pending.result(10)
    assert r.status_code == 200 and r.content == expected_body(QUERY, SENTENCES, list(range(6)))
    assert svc.workers[0].wait(5) == 0
    svc.wait_ready(0)  # it said DISCONNECT: gone at once, not after a purge


def test_workers_started_before_the_gateway_join_when_it_comes(service_factory):
    # The worker gives up on the silent broker after 1 s and re-announces after a 1 s back-off:
    # the grace period is what absorbs such a gap.
    svc = service_factory(RERANKER_NO_WORKER_GRACE="3")
    svc.start_worker()
    time.sleep(0.5)  # the worker is up, heartbeating into the void
    svc.start_gateway()
    svc.wait_ready(1, timeout=15)
    assert svc.rerank(QUERY, SENTENCES).content == expected_body(QUERY, SENTENCES, list(range(6)))


def test_gateway_restart_workers_reconnect_by_themselves(service_factory):
    svc = service_factory().start(workers=1)
    os.killpg(svc.gateway.pid, signal.SIGKILL)
    svc.gateway.wait(5)
    svc.start_gateway()
    svc.wait_ready(1, timeout=20)
    assert svc.rerank(QUERY, SENTENCES).status_code == 200
    assert svc.workers[0].poll() is None  # the same worker process, reconnected


def test_a_worker_of_another_pool_is_refused_and_stops(service_factory):
    svc = service_factory(RERANKER_POOL="search").start(workers=1)
    stray = svc.start_worker(RERANKER_POOL="other")
    assert stray.wait(20) == 4
    log = svc.logs()
    assert "refused this worker: this broker serves pool 'search', not 'other'" in log
    assert "refused worker" in log  # the broker's side of it
    assert svc.ready()["workers"] == 1
    r = svc.rerank(QUERY, SENTENCES)
    assert r.content == expected_body(QUERY, SENTENCES, list(range(6)))
