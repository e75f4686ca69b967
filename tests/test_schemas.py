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
