"""A TEI client package (tei-client's HttpClient) pointed at the service's root URL, unchanged: it reads
GET /info (a reranker, by TEI's fields) and POSTs TEI's body to /rerank."""

from __future__ import annotations

import pytest
import tei_client

from worker.stub import stub_score

QUERY = "red apple pie recipe"
DOCS = ["green pie", "a recipe for red apple pie", "red car", "apple", "nothing here", "red apple"]


def test_tei_client_reranks_against_the_root_url(stub_service):
    client = tei_client.HttpClient(stub_service.url)
    assert client.health()
    info = client.info()
    assert info.server_model_type == tei_client.ModelType.Reranker and info.server_model_id == "stub"
    result = client.rerank(QUERY, DOCS, return_text=True)
    expected = sorted(range(len(DOCS)), key=lambda i: -stub_score(QUERY, DOCS[i]))
    assert [r.index for r in result.ranks] == expected
    assert [r.text for r in result.ranks] == [DOCS[i] for i in expected]
    assert result.ranks[0].score == pytest.approx(stub_score(QUERY, DOCS[expected[0]]))
