import json

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from gateway.schemas import RerankRequest, render_results


def original(ids, scores):
    """The original service's serialisation, verbatim in effect."""
    results = [{"id": ids[i], "score": score} for i, score in enumerate(scores)]
    results.sort(reverse=True, key=lambda x: x["score"])
    return orjson.dumps({"results": results}, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("seed", range(5))
def test_render_matches_the_original_byte_for_byte(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random(40).astype(np.float32)
    scores[::7] = scores[0]  # ties
    ids = rng.integers(-10**12, 10**12, 40).tolist()
    assert render_results(ids, scores) == original(ids, scores)


def test_render_empty():
    assert render_results([], np.empty(0, np.float32)) == b'{"results":[]}'


def test_request_validation():
    assert RerankRequest(query="q", sentences=["a"], ids=[3]).ids == [3]
    with pytest.raises(ValidationError, match="same length"):
        RerankRequest(query="q", sentences=["a", "b"], ids=[3])
    with pytest.raises(ValidationError):
        RerankRequest(query="q", sentences=["a"], ids=["3"])


@pytest.mark.parametrize("texts", [("\ud800", "a"), ("q", "\udfff"), ("q", "é\ud83d")])
def test_lone_surrogates_are_refused_parsed_either_way(texts):
    query, sentence = texts
    with pytest.raises(ValidationError, match="surrogate"):
        RerankRequest(query=query, sentences=[sentence], ids=[1])
    raw = json.dumps({"query": query, "sentences": [sentence], "ids": [1]}).encode()  # "\ud800" escaped
    with pytest.raises(ValidationError, match="surrogate"):
        RerankRequest.model_validate(json.loads(raw))  # as FastAPI's route parses
    with pytest.raises(ValidationError):
        RerankRequest.model_validate_json(raw)  # pydantic's parser refuses it itself


def test_escaped_surrogate_pairs_are_text():
    raw = b'{"query": "\\ud83d\\ude00", "sentences": ["\xc3\xa9"], "ids": [1]}'
    for parsed in (RerankRequest.model_validate(json.loads(raw)), RerankRequest.model_validate_json(raw)):
        assert (parsed.query, parsed.sentences) == ("\U0001f600", ["\u00e9"])
