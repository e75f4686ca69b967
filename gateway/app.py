"""The HTTP gateway: an app that validates requests and dispatches them to the broker.

It does no model work. `build_app(settings)` makes the parts (one broker client
per process, the view of the pool, the metrics, the API keys, the handler that
uses them) and stacks the layers a request crosses, outermost first:

    RequestTracing   request id, counts, times, access log (gateway/tracing.py)
    RerankFastPath   plain JSON POST /rerank in the original shape (gateway/fastpath.py)
    the FastAPI app  CORS, the body limit, the API key, TEI bodies at /rerank, the routes

`create_app` wires the FastAPI app. The client's socket is made in the lifespan,
i.e. after gunicorn has forked.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.protocol import ErrorKind
from shared.settings import Settings

from . import docs_ui, errors
from .asgi import Answer, BodyLimit, BodyTimeout, JsonOnly, to_response
from .auth import OPEN, ApiKeys, RequireKey
from .client import BrokerClient
from .disconnect import HUNG_UP, unless_disconnected
from .errors import ServiceError
from .fastpath import RerankFastPath
from .handler import RerankHandler
from .metrics import CONTENT_TYPE, GatewayMetrics
from .pool import PoolView, served
from .routes import cohere, tei
from .schemas import RerankRequest, RerankResponse
from .tracing import RequestTracing

VERSION = "0.1.0"


def build_app(settings: Settings) -> ASGIApp:
    """The gateway's ASGI app for one process.

    The fast path is in front of the FastAPI app rather than one of its middlewares: inside, every
    request would first cross FastAPI's own layers (its telemetry check, body limit and error
    middleware), which about doubled the fast path's time per small request, measured in-process.
    In front of both, BodyTimeout answers a body that stalls, whichever way in it came.
    """
    client = BrokerClient(settings)
    pool = PoolView(client)
    metrics = GatewayMetrics(settings)
    handler = RerankHandler(settings, client, pool, metrics)
    keys = ApiKeys.from_settings(settings)
    app = create_app(settings, client, handler, keys)
    routes = frozenset([*app.openapi()["paths"], *OPEN])
    fast = RerankFastPath(app, handler, settings.max_body_bytes, keys)
    stalled = ServiceError(ErrorKind.BODY_TIMEOUT, f"the request body stalled: nothing of it arrived for "
                                                   f"{settings.body_timeout:g} s (RERANKER_BODY_TIMEOUT)")
    timed = ByDialect(fast, lambda inner, dialect: BodyTimeout(inner, settings.body_timeout,
                                                               errors.answer(stalled, dialect)))
    return RequestTracing(timed, metrics, routes, settings.access_log)


def create_app(settings: Settings, client: BrokerClient, handler: RerankHandler, keys: ApiKeys | None) -> FastAPI:
    """The FastAPI app: its routes, and the layers a request crosses (CORS, the body limit, the API key,
    TEI bodies at /rerank).

    The lifespan starts `client` and closes it; `handler` answers the rerank routes.
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
        description="Scores (query, text) pairs with a sentence-transformers CrossEncoder and returns them "
                    "best first. POST /rerank is the service's own API; POST /v2/rerank (Cohere v2), "
                    "POST /v1/rerank (Cohere v1, Jina) and POST /tei/rerank (text-embeddings-inference, also "
                    "accepted at /rerank by its body's shape) are the ecosystem's, for their clients.",
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,  # docs_ui serves /docs and /redoc with their files, not from a CDN
        redoc_url=None,
        # A JSON body without a Content-Type is read as JSON, as the fast path reads it.
        strict_content_type=False,
        exception_handlers={RequestValidationError: errors.request_validation_failed,
                            HTTPException: errors.http_error},
    )
    # add_middleware puts each layer outside those added before it: CORS is outside the body limit, the
    # API key and the media type check, so that a browser can read their 413, 401 and 415.
    app.add_middleware(tei.TeiByShape, too_large=handler.too_large, limit=settings.max_body_bytes)
    app.add_middleware(JsonOnly, path="/rerank", unsupported=errors.answer(ServiceError(
        ErrorKind.UNSUPPORTED_MEDIA, "the request body must be JSON: send Content-Type: application/json")))
    if keys is not None:
        app.add_middleware(RequireKey, keys=keys)
    too_large = errors.body_too_large(settings.max_body_bytes)
    app.add_middleware(ByDialect, make=lambda inner, dialect: BodyLimit(inner, errors.answer(too_large, dialect),
                                                                        settings.max_body_bytes))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
    )

    rerank_errors = [kind for kind in ErrorKind if kind not in (
        ErrorKind.NOT_READY, ErrorKind.WRONG_POOL, ErrorKind.NOT_FOUND, ErrorKind.METHOD_NOT_ALLOWED,
        ErrorKind.WRONG_MODEL, ErrorKind.TOO_LONG)]

    @app.post("/rerank", response_model=RerankResponse, responses=errors.openapi_responses(rerank_errors),
              summary="Score sentences against a query, best first",
              description="The service's own API. A body in TEI's shape (`texts` instead of `sentences`) is "
                          "answered as POST /tei/rerank.")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        made = await unless_disconnected(request.receive, handler.answer(body))
        return HUNG_UP if made is None else to_response(made)

    app.include_router(cohere.router(handler))
    app.include_router(tei.router(handler))

    @app.get("/health", summary="The gateway process is alive")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when at least one worker is connected and ready, else 503",
             responses={503: {"description": "No worker connected, or the broker is not answering"}})
    async def ready() -> Response:
        try:
            status = await handler.pool.status()
        except ServiceError as exc:
            failure = ServiceError(ErrorKind.NOT_READY, f"broker not answering: {exc.message}")
            return to_response(errors.answer(failure))
        body = {k: status[k] for k in ("workers", "idle", "queued", "running", "pool")}
        return to_response(Answer(200 if status["workers"] > 0 else 503, orjson.dumps(body), []))

    @app.get("/info", summary="The model served, the workers, and the limits clients may rely on")
    async def info() -> dict:
        status = await handler.pool.recent()
        model = served(status)
        return {
            **model,
            "version": VERSION,
            "workers": [{k: w.get(k) for k in ("host", "pid", "model", "backend", "precision", "max_length",
                                               "busy")} for w in status.get("pool", [])],
            "long_texts": settings.long_texts,
            "chunk_overlap": settings.chunk_overlap,
            "chunk_max_tokens": settings.chunk_max_tokens,
            "max_sentences": settings.max_sentences,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout,
            **tei.info(model, settings),
        }

    @app.get("/metrics", summary="Prometheus metrics of the gateway processes, the broker and the workers",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        try:
            status = await handler.pool.status()
        except ServiceError:
            status = None
        return Response(handler.metrics.render(status), media_type=CONTENT_TYPE)

    docs_ui.mount(app)
    app.openapi()  # generate the schema at start-up, so a broken schema fails fast
    return app


class ByDialect:
    """A layer that answers its errors in the dialect of the path: `make(app, dialect)` builds it once for
    each dialect, and each request goes through the one for its path."""

    def __init__(self, app: ASGIApp, make: Callable[[ASGIApp, errors.Dialect], ASGIApp]) -> None:
        self.layers = {dialect: make(app, dialect) for dialect in (errors.detail_body, errors.api_body)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect = errors.dialect_for(scope["path"]) if scope["type"] == "http" else errors.detail_body
        await self.layers[dialect](scope, receive, send)
