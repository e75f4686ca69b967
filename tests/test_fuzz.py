"""Hostile HTTP input, generated and by hand, against the real gateway with stub workers.

- Every route of the gateway's own OpenAPI schema, fuzzed by schemathesis (valid and invalid data): no
  5xx, no hang, answers as documented.
- POST /rerank with bodies from hypothesis (any JSON, NaN and Infinity, huge numbers, deep nesting,
  bytes that are not JSON, any content type): never a 5xx, and the fast path answers byte for byte as
  the FastAPI route does.
- The request model alone, in-process: it validates or refuses, and the refusal renders.
- By hand: the cases probes found (deep nesting, NaN, huge ids, wrong content types, a million bad
  items, a 100,000-character sentence).

Examples are bounded (see SETTINGS) so the whole file runs in tens of seconds.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from gateway import errors
from gateway.schemas import RerankRequest
from tests.test_gateway import JSON, assert_same_answer, post_both_ways

MAX_SENTENCES, MAX_CHARS, MAX_BODY = 50, 500, 20_000
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.service import Service

    svc = Service(tmp_path_factory.mktemp("fuzz"), RERANKER_MAX_SENTENCES=str(MAX_SENTENCES),
                  RERANKER_MAX_CHARS=str(MAX_CHARS), RERANKER_MAX_BODY_BYTES=str(MAX_BODY))
    try:
        yield svc.start(workers=2)
    finally:
        svc.stop()


# -- every route, from the OpenAPI schema ------------------------------------------------

@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_route_answers_as_documented_without_a_5xx(gateway, mode):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    routes = {(o.ok().method.upper(), o.ok().path) for o in schema.get_all_operations()}
    assert ("POST", "/rerank") in routes and ("GET", "/ready") in routes
    seen, statuses = set(), []

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(SETTINGS, max_examples=150)
    def fuzz(case):
        seen.add((case.method.upper(), case.path))
        response = case.call(base_url=gateway.url, timeout=15)  # a hang fails here
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 content_type_conformance, response_schema_conformance])

    fuzz()
    print(f"{mode}: {len(statuses)} requests, statuses {dict(sorted(Counter(statuses).items()))}")
    # Invalid data needs an input to go wrong in: only the POST routes have one.
    assert seen == (routes if mode is GenerationMode.POSITIVE else {r for r in routes if r[0] == "POST"}), seen


# -- POST /rerank, both ways in ------------------------------------------------------------

def json_values(leaves=None):
    leaves = leaves or st.one_of(
        st.none(), st.booleans(), st.text(max_size=20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(), st.integers(min_value=2**63 - 2, max_value=2**66), st.integers(max_value=-(2**63) + 1))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=5), max_leaves=25)


# The three fields as they should be, and as anything else.
QUERIES = st.text(max_size=40) | json_values()
SENTENCE_LISTS = st.lists(st.text(max_size=60), max_size=8) | st.lists(json_values(), max_size=4) | json_values()
ID_LISTS = (st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1), max_size=8)
            | st.lists(st.integers() | st.floats(allow_nan=True), max_size=6) | json_values())


@st.composite
def request_like(draw):
    """Mostly request-shaped objects: each field right or wrong, present or missing, and extras."""
    body = {}
    for name, values in (("query", QUERIES), ("sentences", SENTENCE_LISTS), ("ids", ID_LISTS)):
        if draw(st.integers(0, 9)):  # missing one time in ten
            body[name] = draw(values)
    if draw(st.booleans()) and isinstance(body.get("sentences"), list) and isinstance(body.get("ids"), list):
        body["ids"] = body["ids"][:len(body["sentences"])]  # often valid, so that scoring runs too
        body["ids"] += list(range(len(body["sentences"]) - len(body["ids"])))
    body.update(draw(st.dictionaries(st.text(max_size=5), json_values(), max_size=2)))
    return body


def encode(value) -> bytes:
    """As JSON, the non-standard NaN and Infinity included, and lone surrogates as \\ud800 escapes."""
    return json.dumps(value, allow_nan=True).encode()


BODIES = st.one_of(
    request_like().map(encode),
    json_values().map(encode),
    st.integers(1, 9000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 4000).map(lambda depth: b'{"query": ' + b'{"a":' * depth + b"1" + b"}" * depth
                             + b', "sentences": ["a"], "ids": [1]}'),
    st.binary(max_size=300),
    request_like().map(lambda body: encode(body)[: len(encode(body)) // 2]),  # cut short
)
CONTENT_TYPES = st.sampled_from([
    None, "application/json", "Application/JSON; charset=utf-8", "application/problem+json", "application/jsonx",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "*/*",
])


@given(body=BODIES, content_type=CONTENT_TYPES)
@settings(SETTINGS, max_examples=250)
def test_rerank_never_answers_5xx_and_both_ways_answer_alike(gateway, body, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    fast, full = post_both_ways(gateway, body, headers)
    assert fast.status_code < 500, (fast.status_code, fast.text[:500])
    assert_same_answer(fast, full)


# -- the request model, in-process -------------------------------------------------------------

@given(raw=BODIES)
@settings(SETTINGS, max_examples=400)
def test_the_request_model_validates_or_refuses_and_the_refusal_renders(raw):
    """As the two ways in read a body: the fast path with pydantic's JSON parser, the FastAPI route (and
    the fast path's refusals) with stdlib json, whose validation errors are rendered."""
    try:
        fast = RerankRequest.model_validate_json(raw)
    except ValidationError:
        fast = None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # FastAPI answers these itself (422 invalid JSON, 400)
        assert fast is None
        return
    try:
        full = RerankRequest.model_validate(parsed)
    except ValidationError as exc:
        assert fast is None
        status, body, _ = errors.answer(errors.invalid_request(exc.errors()))
        assert status == 422 and json.loads(body)["detail"]
        return
    if fast is not None:
        assert fast == full
    assert len(full.ids) == len(full.sentences)
    assert all(-(2**63) <= i <= 2**64 - 1 for i in full.ids)


@given(query=st.text(), sentences=st.lists(st.text(), max_size=20), data=st.data())
@settings(SETTINGS, max_examples=300)
def test_every_valid_request_is_read_as_sent(query, sentences, data):
    ids = data.draw(st.lists(st.integers(-(2**63), 2**64 - 1), min_size=len(sentences), max_size=len(sentences)))
    body = orjson.dumps({"query": query, "sentences": sentences, "ids": ids})
    request = RerankRequest.model_validate_json(body)
    assert (request.query, request.sentences, request.ids) == (query, sentences, ids)


# -- by hand: what probes found ----------------------------------------------------------------

NEST = 1000


@pytest.mark.parametrize("content, headers, status", [
    pytest.param(b"[" * NEST + b"]" * NEST, JSON, 400, id="array-1000-deep"),
    # deep enough to overflow the error renderer's stack, not enough for the JSON parsers to refuse it
    pytest.param(b"[" * 550 + b"]" * 550, JSON, 422, id="array-550-deep"),
    pytest.param(b'{"query": "q", "sentences": ' + b"[" * 550 + b"]" * 550 + b', "ids": [1]}', JSON, 422,
                 id="sentences-550-deep"),
    pytest.param(b'{"query": ' + b"[" * NEST + b"]" * NEST + b', "sentences": ["a"], "ids": [1]}', JSON, 400,
                 id="query-1000-deep"),
    pytest.param(b'{"a":' * NEST + b"1" + b"}" * NEST, JSON, 400, id="object-1000-deep"),
    pytest.param(b'{"query": NaN, "sentences": ["a"], "ids": [1]}', JSON, 422, id="nan-query"),
    pytest.param(b'{"query": "q", "sentences": [Infinity], "ids": [1]}', JSON, 422, id="inf-sentence"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [-Infinity]}', JSON, 422, id="minus-inf-id"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1], "x": NaN}', JSON, 200, id="nan-extra-field"),
    pytest.param(b"NaN", JSON, 422, id="nan-body"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [' + b"9" * 5000 + b"]}", JSON, 400,
                 id="id-5000-digits"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [-9223372036854775809]}', JSON, 422,
                 id="id-under-64-bits"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1e999999]}', JSON, 422, id="id-huge-exponent"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]}', {"content-type": "text/plain"}, 415,
                 id="text-plain"),
    pytest.param(b"query=q&sentences=a&ids=1", {"content-type": "application/x-www-form-urlencoded"}, 415,
                 id="form"),
    pytest.param(b'--x\r\n\r\n{"query": "q"}\r\n--x--', {"content-type": "multipart/form-data; boundary=x"}, 415,
                 id="multipart"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]}', {"content-type": "application/xml"}, 415,
                 id="xml"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]}', {"content-type": "application/jsonx"}, 415,
                 id="json-lookalike"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [1]}', {"content-type": "application/problem+json"},
                 200, id="structured-json"),
])
def test_hostile_bodies_get_a_clear_4xx_both_ways(gateway, content, headers, status):
    fast, full = post_both_ways(gateway, content, headers)
    assert_same_answer(fast, full)
    assert fast.status_code == status, fast.text[:300]


@pytest.mark.parametrize("content", [
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [' + b'"x",' * 4000 + b'"x"]}', id="4001-bad-ids"),
    pytest.param(b'{"query": "q", "sentences": [' + b"1," * 9000 + b"1], \"ids\": []}", id="9001-bad-sentences"),
    pytest.param(b'{"query": "q", "sentences": ["a"], "ids": [' + b"1," * 9000 + b"1]}", id="9001-ids-for-1"),
    pytest.param(b'{"query": [' + b"1," * 9000 + b'1], "sentences": ["a"], "ids": [1]}', id="query-a-big-list"),
])
def test_a_body_of_many_errors_gets_a_short_422(gateway, content):
    """One error per field is enough, and a large input is not quoted back: writing back a million
    of them held a gateway process for over 30 s."""
    fast, full = post_both_ways(gateway, content)
    assert_same_answer(fast, full)
    assert fast.status_code == 422
    detail = fast.json()["detail"]
    assert len(detail) <= 3 and len(fast.content) < 1000, fast.text[:300]


@pytest.mark.model
def test_a_100k_character_sentence_is_truncated_by_tokens(service_factory, tiny_model):
    import torch
    from sentence_transformers import CrossEncoder

    from devkit.models import sample_text

    svc = service_factory(RERANKER_MAX_CHARS="200000").start(
        workers=1, RERANKER_BACKEND="torch", RERANKER_MODEL=str(tiny_model), NUM_THREADS="1")
    rng = random.Random(5)
    query, long = sample_text(rng, 8), sample_text(rng, 30_000)[:100_000]
    assert len(long) == 100_000
    r = svc.rerank(query, [long, "a short one"], [1, 2])
    assert r.status_code == 200, r.text
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker
    try:
        expected = CrossEncoder(str(tiny_model), device="cpu").predict([(query, long), (query, "a short one")],
                                                                       show_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    got = {x["id"]: x["score"] for x in r.json()["results"]}
    assert abs(got[1] - expected[0]) <= 1e-5 and abs(got[2] - expected[1]) <= 1e-5
