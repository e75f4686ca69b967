"""The official Cohere Python SDK against the running service, unchanged: ClientV2 (/v2/rerank) and Client
(/v1/rerank), with the API key, and its errors."""

from __future__ import annotations

import cohere
import pytest

from worker.stub import stub_score

KEY = "sdk-key"
QUERY = "red apple pie recipe"
DOCS = ["green pie", "a recipe for red apple pie", "red car", "apple", "nothing here", "red apple"]
BEST_FIRST = sorted(range(len(DOCS)), key=lambda i: -stub_score(QUERY, DOCS[i]))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from tests.service import Service

    svc = Service(tmp_path_factory.mktemp("sdk"), RERANKER_API_KEY=KEY)
    try:
        yield svc.start(workers=1)
    finally:
        svc.stop()


def test_client_v2_reranks(service):
    co = cohere.ClientV2(base_url=service.url, api_key=KEY)
    response = co.rerank(model="stub", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == BEST_FIRST[:3]
    assert [r.relevance_score for r in response.results] == pytest.approx(
        [stub_score(QUERY, DOCS[i]) for i in BEST_FIRST[:3]], abs=1e-6)
    assert response.meta.billed_units.search_units == 1
    assert response.id


def test_client_v1_reranks_mixed_documents(service):
    co = cohere.Client(base_url=service.url, api_key=KEY)
    documents = [d if i % 2 else {"text": d} for i, d in enumerate(DOCS)]
    response = co.rerank(model="stub", query=QUERY, documents=documents, top_n=2, return_documents=True)
    assert [r.index for r in response.results] == BEST_FIRST[:2]
    assert [r.document.text for r in response.results] == [DOCS[i] for i in BEST_FIRST[:2]]


def test_a_wrong_key_is_the_sdks_unauthorized_error(service):
    co = cohere.ClientV2(base_url=service.url, api_key="wrong")
    with pytest.raises(cohere.UnauthorizedError) as caught:
        co.rerank(model="stub", query=QUERY, documents=DOCS)
    assert caught.value.body["error_type"] == "unauthorized" and "Bearer" in caught.value.body["message"]


def test_another_model_is_the_sdks_not_found_error_naming_the_served_one(service):
    co = cohere.ClientV2(base_url=service.url, api_key=KEY)
    with pytest.raises(cohere.NotFoundError) as caught:
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert "'stub'" in caught.value.body["message"]


def test_an_invalid_request_is_the_sdks_unprocessable_error(service):
    co = cohere.ClientV2(base_url=service.url, api_key=KEY)
    with pytest.raises(cohere.UnprocessableEntityError) as caught:
        co.rerank(model="stub", query=QUERY, documents=DOCS, top_n=-1)
    assert caught.value.body["error_type"] == "invalid_request" and "top_n" in caught.value.body["message"]
