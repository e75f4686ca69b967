"""The HTTP contract: request and response bodies of POST /rerank.

Kept byte-compatible with the original service: request
{"query": str, "sentences": [str], "ids": [int]}, response
{"results": [{"id": int, "score": float}]} sorted by score, highest first.
The optional fields (top_n, raw_scores, chunk), absent, change nothing of that.
The other dialects' models are in gateway/routes/.
"""

from __future__ import annotations

import re
from typing import Annotated, Optional, Sequence

import numpy as np
import orjson
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationInfo,
                      field_validator, model_validator)


# What the response's JSON encoder can write: signed or unsigned 64-bit.
Id = Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)]
TopN = Annotated[StrictInt, Field(ge=0, description="Return only the best N results (0: none); absent: all.")]
Chunk = Annotated[StrictBool, Field(description="Texts longer than the model's window: true scores every window "
                                                "and keeps the best, false truncates; absent: the service's "
                                                "default (RERANKER_LONG_TEXTS).")]
_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_checked(texts: str | list[str], info: ValidationInfo) -> str | list[str]:
    """Refuse lone surrogates. pydantic's JSON parser refuses them itself (json_invalid); stdlib json,
    which FastAPI's routes parse with, lets "\ud800" through, and no UTF-8 encoder can send it on."""
    if info.mode == "json":
        return texts
    for text in [texts] if isinstance(texts, str) else texts:
        if isinstance(text, str) and not text.isascii() and _SURROGATE.search(text):
            raise ValueError("a text is not valid Unicode: it holds a lone surrogate (U+D800..U+DFFF)")
    return texts


class RerankRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "query": "what is a cross-encoder?",
                "sentences": ["A cross-encoder scores a query and a text together.", "Paris is in France."],
                "ids": [12, 7],
            }],
            # a rule JSON Schema cannot say: the two lists pair up, index by index
            "x-same-length": [["sentences", "ids"]],
        }
    )

    query: StrictStr = Field(description="The search query.")
    # fail_fast: the first bad item is enough to refuse a request; listing a million of them would cost
    # the gateway seconds of CPU per request (measured: 1.6M bad ids held a process for over 30 s).
    sentences: list[StrictStr] = Field(description="Candidate texts to score against the query.", fail_fast=True)
    ids: list[Id] = Field(description="The caller's id for each sentence, returned with its score; "
                                      "as many as there are sentences (422 otherwise).", fail_fast=True)
    top_n: Optional[TopN] = None
    raw_scores: StrictBool = Field(False, description="Scores as the model's logits, without the sigmoid.")
    chunk: Optional[Chunk] = None

    _valid_unicode = field_validator("query", "sentences")(unicode_checked)

    @model_validator(mode="after")
    def _same_length(self) -> "RerankRequest":
        if len(self.ids) != len(self.sentences):
            raise ValueError(
                f"'ids' and 'sentences' must have the same length: got {len(self.ids)} ids "
                f"for {len(self.sentences)} sentences"
            )
        return self


class RerankResult(BaseModel):
    id: int = Field(description="The caller's id of the sentence.", examples=[12])
    score: float = Field(description="CrossEncoder score (sigmoid of the logit, 0..1).", examples=[0.93])


class RerankResponse(BaseModel):
    # The answer to RerankRequest's example, as the README shows it.
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"results": [{"id": 12, "score": 0.93}, {"id": 7, "score": 0.0012}]}]})

    results: list[RerankResult] = Field(description="One per sentence (the best top_n), highest score first.")


def best_first(scores: np.ndarray, top_n: int | None = None) -> np.ndarray:
    """Indices by descending score, ties in request order (as list.sort(reverse=True) keeps them); the
    first top_n only, where given."""
    order = np.argsort(-scores, kind="stable")
    return order if top_n is None else order[:top_n]


def render_results(ids: Sequence[int], scores: np.ndarray, top_n: int | None = None) -> bytes:
    """The response body, as the original service wrote it.

    Stable descending order, numpy float32 scores serialised by orjson's OPT_SERIALIZE_NUMPY.
    """
    order = best_first(scores, top_n)
    sorted_scores = scores[order]
    results = [{"id": ids[i], "score": s} for i, s in zip(order.tolist(), sorted_scores)]
    return orjson.dumps({"results": results}, option=orjson.OPT_SERIALIZE_NUMPY)
