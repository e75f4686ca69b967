"""POST /rerank as a plain ASGI app in front of the FastAPI app (gateway.app.build_app puts it there).

Profiled at 32 concurrent W30 requests, about half of the gateway's CPU went to
the layers a request crosses before and after the handler: Starlette's error
and exception middlewares, routing, FastAPI's dependency solving, stdlib json,
the response classes (docs/benchmarks.md). The plain JSON POST that search
backends send skips them: pydantic parses and validates the raw body in one
step, the RerankHandler answers, and the answer is written with two ASGI
messages. Everything else goes on to the FastAPI app: a browser request with an
Origin header (it needs CORS), another content type, a request without a valid
API key where one is set (the app answers 401), every other route, and any body
that pydantic refuses (TEI's shape among them: the app routes it by shape). The
FastAPI app's /rerank route runs the same RerankHandler and is what /docs
describes; as it also parses every body the fast path refuses, the two ways in
answer alike (tests/test_gateway.py compares them, errors included).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import is_json, read_body, replay, send_answer
from .auth import ApiKeys
from .disconnect import unless_disconnected
from .handler import RerankHandler
from .schemas import RerankRequest


class RerankFastPath:
    """Serves plain JSON POST /rerank with `handler`; hands every other request to `app`."""

    def __init__(self, app: ASGIApp, handler: RerankHandler, limit: int, keys: ApiKeys | None = None) -> None:
        self.app = app
        self.handler = handler
        self.limit = limit
        self.keys = keys

    def _takes(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"] != "/rerank" or scope["method"] != "POST":
            return False
        authorization = None
        for name, value in scope["headers"]:
            if name == b"origin":
                return False  # CORS: the full stack adds its headers
            if name == b"content-type" and not is_json(value):
                return False  # refused by JsonOnly, in the full stack
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return False  # refused whole by BodyLimit before anything is read
            if name == b"authorization":
                authorization = value
        return self.keys is None or self.keys.accepts(authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            return await self.app(scope, receive, send)
        body = await read_body(receive, send, self.limit, self.handler.too_large)
        if body is None:
            return
        try:
            request = RerankRequest.model_validate_json(body)
        except ValidationError:
            # Rare: FastAPI parses it again (stdlib json, as the route always has) and says what is wrong.
            return await self.app(scope, replay(body, receive), send)
        answer = await unless_disconnected(receive, self.handler.answer(request))
        if answer is not None:  # None: the client hung up, and its work was cancelled
            await send_answer(send, answer)
