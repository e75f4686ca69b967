"""The routes of the ecosystem's reranking APIs, each with its own request and response models:
Cohere v2 (POST /v2/rerank), Cohere v1 and Jina (POST /v1/rerank), and text-embeddings-inference
(POST /tei/rerank, and POST /rerank with a TEI body). They score through the same RerankHandler as
the original POST /rerank, and answer errors in gateway.errors.api_body.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from ..asgi import Answer, to_response
from ..disconnect import HUNG_UP, unless_disconnected
from ..errors import ServiceError, answer, api_body


async def api_answer(request: Request, work: Callable[[], Awaitable[Answer]]) -> Response:
    """The answer `work` makes, or its ServiceError's in the API routes' dialect; the work stops
    (and its queued pairs are dropped) if the client hangs up first."""
    try:
        made = await unless_disconnected(request.receive, work())
    except ServiceError as exc:
        return to_response(answer(exc, api_body))
    return HUNG_UP if made is None else to_response(made)
