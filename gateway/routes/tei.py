"""text-embeddings-inference's rerank: POST /tei/rerank, and POST /rerank with a TEI body.

TEI serves `{query, texts, ...}` at /rerank, where this service's own clients send `{query,
sentences, ids}`. The two bodies differ in shape, so /rerank takes both: `TeiByShape` hands a body
with `texts` and no `sentences` to /tei/rerank, and everything else stays with the original route,
byte for byte as before. A TEI client is pointed at the service's root URL (or, where a distinct
path is wanted, its /tei prefix).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.settings import Settings

from .. import errors
from ..asgi import Answer, read_body, replay
from ..handler import RerankHandler
from ..schemas import Chunk, best_first, unicode_checked
from . import api_answer
from .cohere import ERRORS

PATH = "/tei/rerank"


def _lower(value):
    return value.lower() if isinstance(value, str) else value


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "query": "what is a cross-encoder?",
        "texts": ["A cross-encoder scores a query and a text together.", "Paris is in France."],
        "return_text": True,
    }]})

    query: StrictStr = Field(description="The search query.")
    texts: list[StrictStr] = Field(description="The texts to rank against the query.")
    raw_scores: StrictBool = Field(False, description="Scores as the model's logits, without the sigmoid.")
    return_text: StrictBool = Field(False, description="Echo each text in its result.")
    truncate: Optional[StrictBool] = Field(
        None, description="false: a text that does not fit the model's window with the query gets 413; "
                          "true or absent: it is truncated (or chunked, see `chunk`).")
    truncation_direction: Annotated[Literal["right", "left"], BeforeValidator(_lower)] = Field(
        "right", description="Which end of a too-long text is cut.")
    chunk: Optional[Chunk] = None

    _valid_unicode = field_validator("query", "texts")(unicode_checked)


class Rank(BaseModel):
    index: int = Field(description="The text's position in the request.", examples=[0])
    score: float = Field(description="Sigmoid of the logit (0..1), or the logit with raw_scores.",
                         examples=[0.93])
    text: Optional[str] = Field(None, description="With return_text.")


def router(handler: RerankHandler) -> APIRouter:
    api = APIRouter(tags=["text-embeddings-inference"])

    @api.post(PATH, response_model=list[Rank], responses=errors.openapi_responses(ERRORS),
              summary="Rank texts against a query (TEI); also POST /rerank with this body")
    async def rerank_tei(body: TeiRerankRequest, request: Request) -> Response:
        async def work() -> Answer:
            options = handler.options(raw=body.raw_scores, chunk=body.chunk, truncate=body.truncate is not False,
                                      truncation_side=body.truncation_direction)
            result = await handler.score(body.query, body.texts, options, PATH)
            ranks = []
            for i in best_first(result.scores).tolist():
                rank = {"index": i, "score": result.scores[i]}
                if body.return_text:
                    rank["text"] = body.texts[i]
                ranks.append(rank)
            return Answer(200, orjson.dumps(ranks, option=orjson.OPT_SERIALIZE_NUMPY), result.headers)
        return await api_answer(request, work)

    return api


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}  # TEI names its model_dtype so


def info(model: dict, settings: Settings) -> dict:
    """The fields of TEI's GET /info, which its clients read (and some check: a reranker's model_type)."""
    return {
        "model_id": model["model"] or "unknown",
        "model_sha": None,
        "model_dtype": DTYPES.get(model["precision"], model["precision"] or "unknown"),
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        "max_concurrent_requests": settings.max_queued,
        "max_input_length": model["max_length"],
        "max_batch_tokens": None,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_sentences,
        "auto_truncate": True,
        "tokenization_workers": None,
        "sha": None,
        "docker_label": None,
    }


def tei_shaped(body: bytes) -> bool:
    """Whether a POST /rerank body is TEI's: a JSON object with `texts` and without `sentences`."""
    if b'"texts"' not in body:  # most bodies: no parse
        return False
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and "texts" in value and "sentences" not in value


class TeiByShape:
    """Sends POST /rerank with a TEI body to POST /tei/rerank (the scope's path is changed in place, so
    the layers outside see which route answered). Runs inside the body limit, which has bounded the body."""

    def __init__(self, app: ASGIApp, too_large: Answer, limit: int) -> None:
        self.app = app
        self.too_large = too_large
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/rerank" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = await read_body(receive, send, self.limit, self.too_large)
        if body is None:
            return
        if tei_shaped(body):
            scope["path"] = PATH
            scope["raw_path"] = PATH.encode()
        await self.app(scope, replay(body, receive), send)
