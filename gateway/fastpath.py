"""POST /rerank as a plain ASGI handler, in front of the FastAPI app.

Profiled at 32 concurrent W30 requests, about half of the gateway's CPU went to
the layers a request crosses before and after the handler: Starlette's error
and exception middlewares, routing, FastAPI's dependency solving, stdlib json,
the response classes (docs/benchmarks.md). The plain JSON POST that search
backends send skips them: pydantic parses and validates the raw body in one
step and the answer is written with two ASGI messages. Anything else (a browser
request with an Origin header, which needs CORS, another content type, every
other route) goes through the FastAPI app, whose /rerank route runs the same
`Reranker` and is what /docs describes; the answers are the same either way
(tests/test_gateway.py compares them).
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable

from fastapi.encoders import jsonable_encoder
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from .schemas import RerankRequest

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


async def read_body(receive: Receive, send: Send, limit: int, too_large: Callable[[], Answer]) -> bytes | None:
    """The whole request body; None once it exceeds `limit` bytes (answered with `too_large()`) or the
    client has gone."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            await send_answer(send, too_large())
            return None
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


def validation_errors(body: bytes, exc: ValidationError) -> bytes:
    """The 422 body FastAPI's route gives for `body`: {"detail": [{"type", "loc": ["body", ...], ...}]}.

    Errors are rare, so the body is parsed again as FastAPI parses it (stdlib json, then
    pydantic in Python mode): both ways in then give the same bytes.
    """
    try:
        RerankRequest.model_validate(json.loads(body), from_attributes=True)
        errors = None  # valid for stdlib json, not for pydantic's parser: a lone surrogate
    except json.JSONDecodeError as e:
        errors = [{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "input": {},
                   "ctx": {"error": e.msg}}]
    except ValidationError as again:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in again.errors(include_url=False)]
    except ValueError:  # not text in any UTF (FastAPI answers 400 there)
        errors = None
    if errors is None:  # pydantic's own error, minus the input: it is the whole body
        errors = [{**e, "loc": ("body",), "input": {}} for e in exc.errors(include_url=False)]
    # Rendered as FastAPI's JSONResponse renders it (stdlib json also writes the >64-bit ints an
    # error may quote).
    return json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


async def send_answer(send: Send, answer: Answer) -> None:
    status, body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


class RerankFastPath:
    """Serves plain JSON POST /rerank itself and hands every other request to `app`.

    `answer(request)` is the Reranker's; `too_large()` the 413 answer for a body over `limit`.
    """

    def __init__(self, app: ASGIApp, answer: Callable[[RerankRequest], Awaitable[Answer]],
                 too_large: Callable[[], Answer], limit: int) -> None:
        self.app = app
        self.answer = answer
        self.too_large = too_large
        self.limit = limit

    def _takes(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"] != "/rerank" or scope["method"] != "POST":
            return False
        for name, value in scope["headers"]:
            if name == b"origin":
                return False  # CORS: the full stack adds its headers
            if name == b"content-type" and not value.lower().startswith(b"application/json"):
                return False  # FastAPI decides what a non-JSON body means
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return False  # refused whole by BodyLimit before anything is read
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            return await self.app(scope, receive, send)
        body = await read_body(receive, send, self.limit, self.too_large)
        if body is None:
            return
        try:
            request = RerankRequest.model_validate_json(body)
        except ValidationError as exc:
            return await send_answer(send, (422, validation_errors(body, exc), []))
        await send_answer(send, await self.answer(request))
