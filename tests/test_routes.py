"""The ecosystem's dialects against the real gateway and stub workers: Cohere v2 (/v2/rerank), Cohere v1 and
Jina (/v1/rerank), TEI (/tei/rerank, and /rerank by the body's shape), the original /rerank's new options,
the model check, the API routes' error shape, the API key, /info and the OpenAPI schema."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import orjson
import pytest

from tests.test_gateway import expected_body
from worker.stub import stub_score

QUERY = "red apple pie recipe"
DOCS = ["green pie", "a recipe for red apple pie", "red car", "apple", "nothing here", "red apple"]
SCORES = [stub_score(QUERY, d) for d in DOCS]
BEST_FIRST = sorted(range(len(DOCS)), key=lambda i: -SCORES[i])  # stable: ties keep request order
API_ERROR_KEYS = {"message", "error", "error_type"}


def f32(x: float) -> float:
    return float(np.float32(x))


def assert_api_error(r, status: int, error_type: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert API_ERROR_KEYS <= set(body) and body["error_type"] == error_type, body
    assert body["message"] == body["error"] and body["message"]
    assert "detail" not in body
    return body


# -- Cohere v2 ---------------------------------------------------------------------------

def test_v2_ranks_best_first_with_indices_and_meta(stub_service):
    r = stub_service.http.post("/v2/rerank", json={"model": "stub", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == BEST_FIRST
    assert [x["relevance_score"] for x in body["results"]] == [f32(SCORES[i]) for i in BEST_FIRST]
    assert all("document" not in x for x in body["results"])
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("top_n, expected", [(0, 0), (1, 1), (3, 3), (6, 6), (100, 6)])
def test_top_n_on_every_shape(stub_service, top_n, expected):
    h = stub_service.http
    v2 = h.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": top_n}).json()["results"]
    v1 = h.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": top_n}).json()["results"]
    original = h.post("/rerank", json={"query": QUERY, "sentences": DOCS, "ids": list(range(6)),
                                       "top_n": top_n}).json()["results"]
    assert [x["index"] for x in v2] == [x["index"] for x in v1] == BEST_FIRST[:expected]
    assert [x["id"] for x in original] == BEST_FIRST[:expected]


def test_v2_returns_documents_when_asked(stub_service):
    r = stub_service.http.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2,
                                                   "return_documents": True})
    assert [x["document"] for x in r.json()["results"]] == [{"text": DOCS[i]} for i in BEST_FIRST[:2]]


def test_v2_ignores_fields_that_mean_nothing_here(stub_service):
    r = stub_service.http.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "priority": 0,
                                                   "max_tokens_per_doc": 4096})
    assert r.status_code == 200 and [x["index"] for x in r.json()["results"]] == BEST_FIRST


# -- Cohere v1 / Jina ----------------------------------------------------------------------

def test_v1_takes_strings_and_objects_mixed_and_echoes_them(stub_service):
    documents = [d if i % 2 else {"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    r = stub_service.http.post("/v1/rerank", json={"model": "stub", "query": QUERY, "documents": documents,
                                                   "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == BEST_FIRST
    for x in body["results"]:
        i = x["index"]
        assert x["relevance_score"] == f32(SCORES[i])
        assert x["document"] == ({"text": DOCS[i]} if i % 2 else {"text": DOCS[i], "id": f"doc-{i}"})
    assert body["model"] == "stub"
    assert set(body["usage"]) >= {"total_tokens"} and isinstance(body["usage"]["total_tokens"], int)
    assert body["id"] == r.headers["x-request-id"]


def test_v1_without_return_documents_sends_none(stub_service):
    r = stub_service.http.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS]})
    assert all(set(x) == {"index", "relevance_score"} for x in r.json()["results"])


def test_v1_refuses_rank_fields_it_cannot_rank_by(stub_service):
    r = stub_service.http.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": "a", "title": "b"}],
                                                   "rank_fields": ["title"]})
    body = assert_api_error(r, 422, "invalid_request")
    assert "rank_fields" in body["message"]


# -- TEI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/tei/rerank", "/rerank"])
def test_tei_shape_at_its_path_and_at_rerank(stub_service, path):
    r = stub_service.http.post(path, json={"query": QUERY, "texts": DOCS, "return_text": True,
                                           "raw_scores": False, "truncate": True,
                                           "truncation_direction": "Right"})
    assert r.status_code == 200, r.text
    assert r.json() == [{"index": i, "score": f32(SCORES[i]), "text": DOCS[i]} for i in BEST_FIRST]


def test_tei_shape_through_the_full_stack_too(stub_service):
    r = stub_service.http.post("/rerank", json={"query": QUERY, "texts": DOCS},
                               headers={"Origin": "https://search.example"})
    assert r.status_code == 200 and [x["index"] for x in r.json()] == BEST_FIRST
    assert r.headers["access-control-allow-origin"] in ("*", "https://search.example")


def test_a_tei_body_with_errors_gets_the_api_error_at_rerank(stub_service):
    r = stub_service.http.post("/rerank", json={"query": QUERY, "texts": "not a list"})
    assert_api_error(r, 422, "invalid_request")


def test_the_original_shape_is_unchanged_at_rerank(stub_service):
    ids = [12, 7, 99, -3, 0, 5]
    r = stub_service.http.post("/rerank", json={"query": QUERY, "sentences": DOCS, "ids": ids})
    assert r.content == expected_body(QUERY, DOCS, ids)
    both = stub_service.http.post("/rerank", json={"query": QUERY, "sentences": DOCS, "ids": ids, "texts": ["x"]})
    assert both.content == expected_body(QUERY, DOCS, ids)  # sentences present: the original route
    bad = stub_service.http.post("/rerank", json={"query": QUERY, "sentences": DOCS, "ids": [1]})
    assert bad.status_code == 422 and "detail" in bad.json()


def test_raw_scores_option_on_the_original_route(stub_service):
    # the stub has no activation: its raw scores are its scores; what a model's are is tested with one below
    r = stub_service.http.post("/rerank", json={"query": QUERY, "sentences": DOCS, "ids": list(range(6)),
                                                "raw_scores": True, "top_n": 2})
    assert r.json() == {"results": [{"id": i, "score": f32(SCORES[i])} for i in BEST_FIRST[:2]]}


# -- timings and ids ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/rerank", {"query": QUERY, "sentences": DOCS, "ids": list(range(6))}),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS}),
    ("/tei/rerank", {"query": QUERY, "texts": DOCS}),
])
def test_scored_answers_carry_tei_timing_headers(stub_service, path, body):
    r = stub_service.http.post(path, json=body)
    for header in ("x-compute-time", "x-queue-time", "x-inference-time"):
        assert float(r.headers[header]) >= 0, header


# -- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, docs", [("/v2/rerank", "documents"), ("/v1/rerank", "documents")])
def test_a_model_not_served_gets_404_naming_the_one_served(stub_service, path, docs):
    r = stub_service.http.post(path, json={"model": "rerank-v3.5", "query": QUERY, docs: DOCS})
    body = assert_api_error(r, 404, "wrong_model")
    assert "'rerank-v3.5'" in body["message"] and "'stub'" in body["message"]
    assert stub_service.http.post(path, json={"model": "stub", "query": QUERY, docs: DOCS}).status_code == 200


def test_any_model_name_is_accepted_where_the_operator_says(service_factory):
    svc = service_factory(RERANKER_ACCEPT_ANY_MODEL="true").start(workers=1)
    r = svc.http.post("/v2/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200 and [x["index"] for x in r.json()["results"]] == BEST_FIRST


def test_info_reports_the_model_served_and_the_workers(stub_service):
    info = stub_service.get("/info").json()
    assert (info["model"], info["backend"], info["precision"]) == ("stub", "stub", "none")
    assert len(info["workers"]) == 2 and {w["model"] for w in info["workers"]} == {"stub"}
    assert info["max_sentences"] == 50 and info["version"]


# -- errors in the API routes' shape -------------------------------------------------------------

@pytest.mark.parametrize("method, path, kwargs, status, error_type", [
    ("post", "/v2/rerank", {"json": {"documents": ["a"]}}, 422, "invalid_request"),
    ("post", "/v2/rerank", {"json": {"query": "q", "documents": [1]}}, 422, "invalid_request"),
    ("post", "/v2/rerank", {"content": b'{"query": "q", "documents": [', "headers": {"content-type": "application/json"}},
     422, "invalid_request"),
    ("post", "/v1/rerank", {"json": {"query": "q", "documents": [{"title": "no text"}]}}, 422, "invalid_request"),
    ("post", "/tei/rerank", {"json": {"query": "q"}}, 422, "invalid_request"),
    ("post", "/v2/rerank", {"json": {"query": "q", "documents": ["s"] * 51}}, 413, "too_large"),
    ("post", "/v1/rerank", {"json": {"query": "q", "documents": ["x" * 501]}}, 413, "too_large"),
    ("post", "/tei/rerank", {"content": b" " * 20001, "headers": {"content-type": "application/json"}}, 413,
     "too_large"),
    ("get", "/v2/rerank", {}, 405, "method_not_allowed"),
    ("get", "/v2/nothing", {}, 404, "not_found"),
    ("post", "/tei/nothing", {"json": {}}, 404, "not_found"),
])
def test_every_error_on_an_api_route_has_the_api_shape(stub_service, method, path, kwargs, status, error_type):
    r = getattr(stub_service.http, method)(path, **kwargs)
    assert_api_error(r, status, error_type)


def test_other_routes_keep_fastapis_detail(stub_service):
    assert stub_service.get("/nothing").json() == {"detail": "Not Found"}
    assert stub_service.http.post("/rerank", json={"query": "q"}).json()["detail"][0]["loc"] == ["body", "sentences"]


def test_overload_has_the_api_shape_on_api_routes(service_factory):
    svc = service_factory(RERANKER_MAX_QUEUED="1", RERANKER_REQUEST_TIMEOUT="3")
    svc.start(workers=1, RERANKER_STUB_DELAY_MS="4000")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(svc.rerank, "q", ["a"])
        svc.wait_for(lambda: svc.ready()["running"] == 1, 5, "the first request to be in flight")
        r = svc.http.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
        pending.result(10)
    assert_api_error(r, 429, "overloaded")
    assert r.headers["retry-after"] == "1"


# -- the API key --------------------------------------------------------------------------------

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory):
    from tests.service import Service

    tmp = tmp_path_factory.mktemp("keyed")
    (tmp / "keys").write_text("# rotated monthly\nold-key\n")
    svc = Service(tmp, RERANKER_API_KEY=KEY, RERANKER_API_KEY_FILE=str(tmp / "keys"))
    try:
        yield svc.start(workers=1)
    finally:
        svc.stop()


ORIGINAL = {"query": QUERY, "sentences": DOCS, "ids": list(range(6))}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}])
def test_without_a_valid_key_every_route_but_the_open_ones_gets_401(keyed_service, headers):
    h = keyed_service.http
    for extra in ({}, {"Origin": "https://search.example"}):  # the fast path and the full stack
        r = h.post("/rerank", json=ORIGINAL, headers={**headers, **extra})
        assert r.status_code == 401 and "detail" in r.json() and r.headers["www-authenticate"] == "Bearer"
    assert_api_error(h.post("/v2/rerank", json={"query": "q", "documents": ["a"]}, headers=headers), 401,
                     "unauthorized")
    assert_api_error(h.post("/tei/rerank", json={"query": "q", "texts": ["a"]}, headers=headers), 401,
                     "unauthorized")
    for path in ("/info", "/metrics"):
        assert h.get(path, headers=headers).status_code == 401, path
    for path in ("/health", "/ready", "/docs", "/openapi.json"):
        assert h.get(path, headers=headers).status_code == 200, path


@pytest.mark.parametrize("key", [KEY, "old-key"])
def test_a_valid_key_passes_everywhere(keyed_service, key):
    h = keyed_service.http
    auth = {"Authorization": f"bearer {key}"}
    for extra in ({}, {"Origin": "https://search.example"}):
        r = h.post("/rerank", json=ORIGINAL, headers={**auth, **extra})
        assert r.content == expected_body(QUERY, DOCS, list(range(6)))
    assert h.post("/v2/rerank", json={"query": QUERY, "documents": DOCS}, headers=auth).status_code == 200
    assert h.post("/rerank", json={"query": QUERY, "texts": DOCS}, headers=auth).status_code == 200
    assert h.get("/metrics", headers=auth).status_code == 200


def test_cors_preflight_needs_no_key(keyed_service):
    r = keyed_service.http.options("/v2/rerank", headers={
        "Origin": "https://search.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200


# -- the schema -----------------------------------------------------------------------------------

def test_openapi_documents_every_route_with_examples(stub_service):
    spec = stub_service.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/rerank", "/v2/rerank", "/v1/rerank", "/tei/rerank"):
        post = spec["paths"][path]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        assert schemas[ref]["examples"], path
        assert "200" in post["responses"] and "422" in post["responses"], path
    for path in ("/health", "/ready", "/info", "/metrics"):
        assert "get" in spec["paths"][path], path
    assert schemas["RerankRequest"]["x-same-length"] == [["sentences", "ids"]]
    assert "sentences" in schemas["RerankRequest"]["properties"]["ids"]["description"]


def test_examples_in_the_schema_are_answered(stub_service):
    spec = stub_service.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/rerank", "/v2/rerank", "/v1/rerank", "/tei/rerank"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        example = dict(schemas[ref.split("/")[-1]]["examples"][0])
        example.pop("model", None)  # the stub serves "stub"
        assert stub_service.http.post(path, content=orjson.dumps(example),
                                      headers={"content-type": "application/json"}).status_code == 200, path


# -- raw scores and long texts on a real model -----------------------------------------------------------

@pytest.mark.model
def test_raw_scores_are_the_models_logits_on_every_shape(service_factory, conditioned_model):
    import torch
    from sentence_transformers import CrossEncoder

    svc = service_factory()
    svc.start_gateway()
    svc.start_worker(RERANKER_BACKEND="torch", RERANKER_MODEL=str(conditioned_model), NUM_THREADS="1")
    svc.wait_ready(1, timeout=120)  # a torch worker takes its time to start on a busy machine
    torch.set_num_threads(1)
    logits = CrossEncoder(str(conditioned_model), device="cpu").predict(
        [(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity(), show_progress_bar=False)
    original = svc.http.post("/rerank", json={**ORIGINAL, "raw_scores": True}).json()["results"]
    tei = svc.http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    got_original = np.array([x["score"] for x in sorted(original, key=lambda x: x["id"])])
    got_tei = np.array([x["score"] for x in sorted(tei, key=lambda x: x["index"])])
    np.testing.assert_allclose(got_original, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_tei, logits, rtol=0, atol=1e-5)
    assert (logits < 0).any() or (logits > 1).any()  # really logits
    sigmoid = svc.http.post("/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
    got = np.array([x["relevance_score"] for x in sorted(sigmoid, key=lambda x: x["index"])])
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    r = svc.http.post("/tei/rerank", json={"query": QUERY, "texts": [" ".join(DOCS * 200)], "truncate": False})
    assert_api_error(r, 413, "too_long")
    # usage: the tokens the worker scored (pairs not in the broker's cache yet)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(conditioned_model))
    fresh = [f"{d} once more" for d in DOCS]
    body = svc.http.post("/v1/rerank", json={"query": QUERY, "documents": fresh}).json()
    assert body["usage"]["total_tokens"] == sum(len(tokenizer(QUERY, d)["input_ids"]) for d in fresh), body
