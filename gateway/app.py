"""The HTTP gateway: an app that validates requests and dispatches them to the broker.

It does no model work. `build_app(settings)` makes the parts (one broker client
per process, the handler that uses it) and puts the /rerank fast path in front
of the FastAPI app that `create_app` wires from them. The client's socket is
made in the lifespan, i.e. after gunicorn has forked.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import ASGIApp

from shared.protocol import ErrorKind
from shared.settings import Settings

from . import docs_ui, errors
from .asgi import Answer, BodyLimit, BodyTimeout, JsonOnly, to_response
from .client import BrokerClient
from .errors import ServiceError
from .fastpath import RerankFastPath
from .handler import RerankHandler
from .schemas import RerankRequest, RerankResponse


def build_app(settings: Settings) -> ASGIApp:
    """The gateway's ASGI app for one process.

    The fast path is in front of the FastAPI app rather than one of its middlewares: inside, every
    request would first cross FastAPI's own layers (its telemetry check, body limit and error
    middleware), which about doubled the fast path's time per small request, measured in-process.
    In front of both, BodyTimeout answers a body that stalls, whichever way in it came.
    """
    client = BrokerClient(settings)
    handler = RerankHandler(settings, client)
    stalled = errors.answer(ServiceError(ErrorKind.BODY_TIMEOUT, f"the request body stalled: nothing of it "
                                         f"arrived for {settings.body_timeout:g} s (RERANKER_BODY_TIMEOUT)"))
    return BodyTimeout(RerankFastPath(create_app(settings, client, handler), handler, settings.max_body_bytes),
                       settings.body_timeout, stalled)


def create_app(settings: Settings, client: BrokerClient, handler: RerankHandler) -> FastAPI:
    """The FastAPI app: its routes, and the layers a request crosses (CORS, the body limit).

    The lifespan starts `client` and closes it; `handler` answers POST /rerank.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await client.start()
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(
        title="Cross-encoder reranker",
        description="Scores (query, sentence) pairs with a sentence-transformers CrossEncoder "
                    "and returns the caller's ids, best first.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # docs_ui serves /docs and /redoc with their files, not from a CDN
        redoc_url=None,
        # A JSON body without a Content-Type is read as JSON, as the fast path reads it.
        strict_content_type=False,
        exception_handlers={RequestValidationError: errors.request_validation_failed},
    )
    # add_middleware puts each layer outside those added before it: CORS is outside the body limit and
    # the media type check, so that a browser can read their 413 and 415.
    app.add_middleware(BodyLimit, too_large=handler.too_large, limit=settings.max_body_bytes)
    app.add_middleware(JsonOnly, path="/rerank", unsupported=errors.answer(ServiceError(
        ErrorKind.UNSUPPORTED_MEDIA, "the request body must be JSON: send Content-Type: application/json")))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
    )

    rerank_errors = [kind for kind in ErrorKind if kind not in (ErrorKind.NOT_READY, ErrorKind.WRONG_POOL,
                                                                ErrorKind.TOO_LONG, ErrorKind.UNSUPPORTED)]

    @app.post("/rerank", response_model=RerankResponse, responses=errors.openapi_responses(rerank_errors),
              summary="Score sentences against a query, best first")
    async def rerank(body: RerankRequest) -> Response:
        return to_response(await handler.answer(body))

    @app.get("/health", summary="The gateway process is alive")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when at least one worker is connected and ready, else 503",
             responses={503: {"description": "No worker connected, or the broker is not answering"}})
    async def ready() -> Response:
        try:
            status = await client.status()
        except ServiceError as exc:
            failure = ServiceError(ErrorKind.NOT_READY, f"broker not answering: {exc.message}")
            return to_response(errors.answer(failure))
        body = {k: status[k] for k in ("workers", "idle", "queued", "running", "pool")}
        return to_response(Answer(200 if status["workers"] > 0 else 503, orjson.dumps(body), []))

    @app.get("/info", summary="Limits and settings that clients may rely on")
    async def info() -> dict:
        return {
            "max_sentences": settings.max_sentences,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout,
        }

    docs_ui.mount(app)
    app.openapi()  # generate the schema at start-up, so a broken schema fails fast
    return app
