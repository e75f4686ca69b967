"""POST /v2/rerank (Cohere v2) and POST /v1/rerank (Cohere v1, and Jina's API, which has its shape).

Cohere's SDK (`cohere.ClientV2(base_url=..., api_key=...)`, `cohere.Client`) and the Jina clients
work unchanged against them: the request's fields are theirs (fields they send that have no meaning
here, such as Cohere's `priority`, are ignored), results come best first with their `index` in the
request and a `relevance_score` in 0..1, and `meta.billed_units.search_units` counts a search unit per
100 documents as Cohere does. `chunk` is this service's own field (see RerankRequest).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional, Sequence, Union

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from shared.logs import REQUEST_ID
from shared.protocol import ErrorKind

from .. import errors
from ..asgi import Answer
from ..handler import RerankHandler
from ..pool import served
from ..schemas import Chunk, TopN, best_first, unicode_checked
from . import api_answer

ERRORS = [k for k in ErrorKind if k not in (ErrorKind.NOT_READY, ErrorKind.WRONG_POOL, ErrorKind.NOT_FOUND,
                                            ErrorKind.METHOD_NOT_ALLOWED)]
PositiveInt = Annotated[int, Field(ge=1, strict=True)]


class CohereV2Request(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "mixedbread-ai/mxbai-rerank-base-v1",
        "query": "what is a cross-encoder?",
        "documents": ["A cross-encoder scores a query and a text together.", "Paris is in France."],
        "top_n": 1,
    }]})

    model: Optional[StrictStr] = Field(None, description="The model to use: the one served (GET /info), or "
                                                         "absent; another name gets 404 unless the service "
                                                         "accepts any (RERANKER_ACCEPT_ANY_MODEL).")
    query: StrictStr = Field(description="The search query.")
    documents: list[StrictStr] = Field(description="The texts to rank against the query.")
    top_n: Optional[TopN] = None
    max_tokens_per_doc: Optional[PositiveInt] = Field(
        None, description="The tokens of each document scored at most. Given, the documents are chunked: "
                          "scored by their best window of the model's length over their first "
                          "max_tokens_per_doc tokens (within one window, that is truncation there).")
    return_documents: StrictBool = Field(False, description="Echo each document as {\"text\"} in its result.")
    chunk: Optional[Chunk] = None

    _valid_unicode = field_validator("query", "documents")(unicode_checked)


class TextDocument(BaseModel):
    """A document as an object: its `text` is ranked; its other fields come back with it."""
    model_config = ConfigDict(extra="allow")

    text: StrictStr

    _valid_unicode = field_validator("text")(unicode_checked)


class CohereV1Request(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "mixedbread-ai/mxbai-rerank-base-v1",
        "query": "what is a cross-encoder?",
        "documents": ["A cross-encoder scores a query and a text together.", {"text": "Paris is in France."}],
        "top_n": 2,
        "return_documents": True,
    }]})

    model: Optional[StrictStr] = Field(None, description="As in POST /v2/rerank.")
    query: StrictStr = Field(description="The search query.")
    documents: list[Union[StrictStr, TextDocument]] = Field(
        description="The texts to rank: strings, or objects with a `text` (mixed as you like).")
    top_n: Optional[TopN] = None
    return_documents: StrictBool = Field(False, description="Echo each document in its result: a string as "
                                                            "{\"text\"}, an object as it came.")
    rank_fields: Optional[list[StrictStr]] = Field(None, description="Only [\"text\"] (or absent): the text "
                                                                     "is what is ranked.")
    max_chunks_per_doc: Optional[PositiveInt] = Field(
        None, description="Given, the documents are chunked: scored by their best window, over at most this "
                          "many windows' worth of tokens.")
    chunk: Optional[Chunk] = None

    _valid_unicode = field_validator("query", "documents")(unicode_checked)

    @field_validator("rank_fields")
    @classmethod
    def _text_only(cls, fields: list[str] | None) -> list[str] | None:
        if fields not in (None, [], ["text"]):
            raise ValueError("only the documents' text is ranked: rank_fields may be [\"text\"] or absent")
        return fields


class RankedDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int = Field(description="The document's position in the request.", examples=[0])
    relevance_score: float = Field(description="0..1, higher is more relevant.", examples=[0.93])
    document: Optional[RankedDocument] = Field(None, description="With return_documents.")


class BilledUnits(BaseModel):
    search_units: int = Field(description="One per 100 documents, as Cohere counts them.")


class Meta(BaseModel):
    api_version: dict = Field(examples=[{"version": "2"}])
    billed_units: BilledUnits


class CohereV2Response(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5b1f0e3a9c2d4e8fa1b2c3d4e5f60718",
        "results": [{"index": 0, "relevance_score": 0.93}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }]})

    id: str = Field(description="The request id (as in the X-Request-ID header).")
    results: list[CohereResult] = Field(description="Best first; the best top_n where given.")
    meta: Meta


class Usage(BaseModel):
    total_tokens: int = Field(description="Tokens the workers scored, where they report them; else 0.")
    prompt_tokens: int


class CohereV1Response(CohereV2Response):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5b1f0e3a9c2d4e8fa1b2c3d4e5f60718",
        "model": "mixedbread-ai/mxbai-rerank-base-v1",
        "results": [{"index": 0, "relevance_score": 0.93,
                     "document": {"text": "A cross-encoder scores a query and a text together."}},
                    {"index": 1, "relevance_score": 0.0012, "document": {"text": "Paris is in France."}}],
        "usage": {"total_tokens": 31, "prompt_tokens": 31},
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    }]})

    model: Optional[str] = Field(description="The model that scored the documents.")
    usage: Usage


def search_units(documents: int) -> int:
    return max(1, math.ceil(documents / 100))


def ranked(scores: np.ndarray, top_n: int | None, echo: Sequence[Any] | None) -> list[dict]:
    """Results best first: index and relevance_score, and the document where `echo` gives them."""
    out = []
    for i in best_first(scores, top_n).tolist():
        result = {"index": i, "relevance_score": scores[i]}
        if echo is not None:
            result["document"] = echo[i]
        out.append(result)
    return out


def render(body: dict) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def router(handler: RerankHandler) -> APIRouter:
    api = APIRouter(tags=["Cohere and Jina"])

    @api.post("/v2/rerank", response_model=CohereV2Response, responses=errors.openapi_responses(ERRORS),
              summary="Rank documents against a query (Cohere v2)")
    async def rerank_v2(body: CohereV2Request, request: Request) -> Response:
        async def work() -> Answer:
            await handler.check_model(body.model)
            options = handler.options(chunk=body.chunk, max_tokens=body.max_tokens_per_doc)
            result = await handler.score(body.query, body.documents, options, "/v2/rerank", body.top_n)
            echo = [{"text": d} for d in body.documents] if body.return_documents else None
            return Answer(200, render({
                "id": REQUEST_ID.get(),
                "results": ranked(result.scores, body.top_n, echo),
                "meta": {"api_version": {"version": "2"},
                         "billed_units": {"search_units": search_units(len(body.documents))}},
            }), result.headers)
        return await api_answer(request, work)

    @api.post("/v1/rerank", response_model=CohereV1Response, responses=errors.openapi_responses(ERRORS),
              summary="Rank documents against a query (Cohere v1, Jina)")
    async def rerank_v1(body: CohereV1Request, request: Request) -> Response:
        async def work() -> Answer:
            await handler.check_model(body.model)
            model = served(await handler.pool.recent())
            max_tokens = None
            if body.max_chunks_per_doc is not None:
                max_tokens = body.max_chunks_per_doc * (model["max_length"] or handler.settings.chunk_max_tokens)
            options = handler.options(chunk=body.chunk, max_tokens=max_tokens)
            texts = [d if isinstance(d, str) else d.text for d in body.documents]
            result = await handler.score(body.query, texts, options, "/v1/rerank", body.top_n)
            echo = None
            if body.return_documents:
                echo = [{"text": d} if isinstance(d, str) else d.model_dump() for d in body.documents]
            tokens = result.tokens or 0
            return Answer(200, render({
                "id": REQUEST_ID.get(),
                "model": model["model"] or body.model,
                "results": ranked(result.scores, body.top_n, echo),
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": search_units(len(texts))}},
            }), result.headers)
        return await api_answer(request, work)

    return api
