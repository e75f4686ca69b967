"""The HTTP gateway: a FastAPI app that validates requests and dispatches them to the broker.

It does no model work. `create_app(settings)` builds the app; its broker
connection is made in the lifespan, i.e. after gunicorn has forked.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Callable

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import RerankRequest, RerankResponse, render_results
from shared.settings import Settings

from .client import BrokerClient, ServiceError
from .fastpath import Answer, RerankFastPath, read_body, send_answer

_EMPTY = np.empty(0, dtype=np.float32)

ERRORS = {
    413: {"description": "Too many sentences, a text too long, or a body too large (the limit is in the message)"},
    422: {"description": "Malformed request (the field is named in the message)"},
    429: {"description": "Too many requests in flight"},
    503: {"description": "No worker available"},
    504: {"description": "Not scored within the request timeout"},
}


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error(status: int, message: str) -> Response:
    return json_response({"detail": message}, status)


def error_answer(status: int, message: str) -> Answer:
    headers = [(b"retry-after", b"1")] if status in (429, 503) else []
    return status, orjson.dumps({"detail": message}), headers


class Reranker:
    """What POST /rerank does with a parsed request: the limits, the broker call, the sorted answer.

    Both ways in (the fast path and the FastAPI route) use it, so they answer alike.
    """

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self.settings = settings
        self.app = app  # app.state.broker is made in the lifespan, after fork

    def too_large(self) -> Answer:
        return error_answer(413, f"request body exceeds the limit of {self.settings.max_body_bytes} bytes "
                                 "(RERANKER_MAX_BODY_BYTES)")

    async def answer(self, body: RerankRequest) -> Answer:
        s = self.settings
        if len(body.sentences) > s.max_sentences:
            return error_answer(413, f"{len(body.sentences)} sentences exceed the limit of {s.max_sentences} "
                                     "per request (RERANKER_MAX_SENTENCES)")
        longest = max(max((len(t) for t in body.sentences), default=0), len(body.query))
        if longest > s.max_chars:
            return error_answer(413, f"a text of {longest} characters exceeds the limit of {s.max_chars} "
                                     "(RERANKER_MAX_CHARS)")
        if not body.sentences:
            return 200, render_results([], _EMPTY), []
        started = time.perf_counter()
        try:
            scores = await self.app.state.broker.rerank(body.query, body.sentences)
        except ServiceError as exc:
            return error_answer(exc.status, exc.message)
        except orjson.JSONEncodeError:  # stdlib json (the FastAPI route) lets a lone surrogate through
            return error_answer(422, "a text is not valid Unicode: it holds a lone surrogate (\\ud800-\\udfff)")
        elapsed_ms = (time.perf_counter() - started) * 1000
        return 200, render_results(body.ids, scores), [(b"x-compute-time", b"%.1f" % elapsed_ms)]


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, before they are read whole.

    A declared Content-Length is checked up front (uvicorn holds the client to
    it); a chunked body is buffered up to the limit and then replayed.
    """

    def __init__(self, app: ASGIApp, too_large: Callable[[], Answer], limit: int) -> None:
        self.app = app
        self.too_large = too_large
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await send_answer(send, self.too_large())
            return await self.app(scope, receive, send)
        body = await read_body(receive, send, self.limit, self.too_large)
        if body is None:
            return
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


def create_app(settings: Settings, client: BrokerClient | None = None) -> RerankFastPath:
    """The gateway's ASGI app: the /rerank fast path in front of the FastAPI app.

    `client` is for tests; by default one is made at start-up.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own = client is None
        app.state.broker = client or BrokerClient(settings)
        await app.state.broker.start()
        try:
            yield
        finally:
            if own:
                await app.state.broker.close()

    app = FastAPI(
        title="Cross-encoder reranker",
        description="Scores (query, sentence) pairs with a sentence-transformers CrossEncoder "
                    "and returns the caller's ids, best first.",
        version="0.1.0",
        lifespan=lifespan,
    )
    reranker = Reranker(settings, app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(BodyLimit, too_large=reranker.too_large, limit=settings.max_body_bytes)

    @app.post("/rerank", response_model=RerankResponse, responses=ERRORS,
              summary="Score sentences against a query, best first")
    async def rerank(body: RerankRequest) -> Response:
        status, content, headers = await reranker.answer(body)
        return Response(content, status, {k.decode(): v.decode() for k, v in headers},
                        media_type="application/json")

    @app.get("/health", summary="The gateway process is alive")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when at least one worker is connected and ready, else 503",
             responses={503: {"description": "No worker connected, or the broker is not answering"}})
    async def ready(request: Request) -> Response:
        try:
            status = await request.app.state.broker.status()
        except ServiceError as exc:
            return error(503, f"broker not answering: {exc.message}")
        body = {k: status[k] for k in ("workers", "idle", "queued", "running", "pool")}
        return json_response(body, 200 if status["workers"] > 0 else 503)

    @app.get("/info", summary="Limits and settings that clients may rely on")
    async def info() -> dict:
        return {
            "max_sentences": settings.max_sentences,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout,
        }

    app.openapi()  # generate the schema at start-up, so a broken schema fails fast
    return RerankFastPath(app, reranker.answer, reranker.too_large, settings.max_body_bytes)

