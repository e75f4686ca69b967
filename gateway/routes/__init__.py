"""The routes of the ecosystem's reranking APIs, each with its own request and response models:
Cohere v2 (POST /v2/rerank), Cohere v1 and Jina (POST /v1/rerank), and text-embeddings-inference
(POST /tei/rerank, and POST /rerank with a TEI body). They score through the same RerankHandler as
the original POST /rerank, and answer errors in gateway.errors.api_body.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi.responses import Response

from ..asgi import Answer, to_response
from ..errors import ServiceError, answer, api_body


async def api_answer(work: Callable[[], Awaitable[Answer]]) -> Response:
    """The answer `work` makes, or its ServiceError's in the API routes' dialect."""
    try:
        return to_response(await work())
    except ServiceError as exc:
        return to_response(answer(exc, api_body))
