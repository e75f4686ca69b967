"""The HTTP gateway: a FastAPI app that validates requests and dispatches them to the broker.

It does no model work. `create_app(settings)` builds the app; its broker
connection is made in the lifespan, i.e. after gunicorn has forked.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.schemas import RerankRequest, RerankResponse, render_results
from shared.settings import Settings

from .client import BrokerClient, ServiceError

_EMPTY = np.empty(0, dtype=np.float32)

ERRORS = {
    413: {"description": "Too many sentences, a text too long, or a body too large (the limit is in the message)"},
    422: {"description": "Malformed request (the field is named in the message)"},
    429: {"description": "Too many requests in flight"},
    503: {"description": "No worker available"},
    504: {"description": "Not scored within the request timeout"},
}


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response({"detail": message}, status, headers)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, before they are read whole.

    A declared Content-Length is checked up front (uvicorn holds the client to
    it); a chunked body is buffered up to the limit and then replayed.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, f"request body exceeds the limit of {self.limit} bytes (RERANKER_MAX_BODY_BYTES)")
        await response(scope, receive, send)


def create_app(settings: Settings, client: BrokerClient | None = None) -> FastAPI:
    """The gateway app. `client` is for tests; by default one is made at start-up."""

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
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.post("/rerank", response_model=RerankResponse, responses=ERRORS,
              summary="Score sentences against a query, best first")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        if len(body.sentences) > settings.max_sentences:
            return error(413, f"{len(body.sentences)} sentences exceed the limit of {settings.max_sentences} "
                              "per request (RERANKER_MAX_SENTENCES)")
        longest = max((len(s) for s in body.sentences), default=0)
        if max(longest, len(body.query)) > settings.max_chars:
            return error(413, f"a text of {max(longest, len(body.query))} characters exceeds the limit of "
                              f"{settings.max_chars} (RERANKER_MAX_CHARS)")
        if not body.sentences:
            return Response(render_results([], _EMPTY), media_type="application/json")
        started = time.perf_counter()
        try:
            scores = await request.app.state.broker.rerank(body.query, body.sentences)
        except ServiceError as exc:
            headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
            return error(exc.status, exc.message, headers)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Response(render_results(body.ids, scores), media_type="application/json",
                        headers={"x-compute-time": f"{elapsed_ms:.1f}"})

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
    return app

