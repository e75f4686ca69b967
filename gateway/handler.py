"""What POST /rerank does with a parsed request: the limits, the broker call, the sorted answer.

Both ways in (the fast path and the FastAPI route) use one RerankHandler, so they answer alike.
"""

from __future__ import annotations

import time

import numpy as np

from shared.protocol import ErrorKind, Task
from shared.settings import Settings

from . import errors
from .asgi import Answer
from .client import BrokerClient
from .errors import ServiceError
from .schemas import RerankRequest, render_results

_EMPTY = np.empty(0, dtype=np.float32)


class RerankHandler:
    def __init__(self, settings: Settings, client: BrokerClient) -> None:
        self.settings = settings
        self.client = client
        # the answer to a body over the limit, for the layers that read bodies
        self.too_large = errors.answer(ServiceError(
            ErrorKind.TOO_LARGE,
            f"request body exceeds the limit of {settings.max_body_bytes} bytes (RERANKER_MAX_BODY_BYTES)"))

    async def answer(self, request: RerankRequest) -> Answer:
        s = self.settings
        if len(request.sentences) > s.max_sentences:
            return errors.answer(ServiceError(ErrorKind.TOO_LARGE, f"{len(request.sentences)} sentences exceed the "
                                              f"limit of {s.max_sentences} per request (RERANKER_MAX_SENTENCES)"))
        longest = max(max((len(t) for t in request.sentences), default=0), len(request.query))
        if longest > s.max_chars:
            return errors.answer(ServiceError(ErrorKind.TOO_LARGE, f"a text of {longest} characters exceeds the "
                                              f"limit of {s.max_chars} (RERANKER_MAX_CHARS)"))
        if not request.sentences:
            return Answer(200, render_results([], _EMPTY), [])
        started = time.perf_counter()
        try:
            scored = await self.client.rerank(Task(request.query, request.sentences))
        except ServiceError as exc:
            return errors.answer(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Answer(200, render_results(request.ids, scored.scores), [(b"x-compute-time", b"%.1f" % elapsed_ms)])
