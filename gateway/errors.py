"""Every error the gateway answers, in one place: an ErrorKind becomes an HTTP status, headers and body.

Whoever meets a failure (the scheduler, the broker client, the limits, request
validation, the API key check) says what kind it is and why, as a ServiceError;
only this module says what that looks like in HTTP. `RULES` gives the status and
the headers; a dialect writes the body. Two dialects:

- `detail_body`, the one POST /rerank and the operations routes have always
  spoken (FastAPI's {"detail": ...});
- `api_body`, for the routes of the ecosystem's APIs (Cohere v1/v2, Jina, TEI:
  the paths under API_PREFIXES): {"message", "error", "error_type", "errors"?}.
  Cohere's API and SDK users read `message`; TEI's clients (huggingface_hub,
  text-embeddings-inference's) read `error` and `error_type`; one body serves both.

`dialect_for(path)` picks one, so that every error on an API route (validation,
limits, the API key, FastAPI's own 404 and 405) is in that route's shape.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from shared.protocol import ErrorKind

from .asgi import Answer, to_response


class ServiceError(Exception):
    """A request the gateway answers with an error: what kind of failure, and a message for the caller.

    `errors` lists what is wrong with an invalid request, field by field (FastAPI's list);
    `retry_after`, the seconds after which a retry may succeed, where the broker measured them.
    """

    def __init__(self, kind: ErrorKind, message: str, errors: list | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.errors = errors
        self.retry_after = retry_after


@dataclass(frozen=True)
class Rule:
    status: int
    description: str  # for the API docs
    retry_after: bool = False  # the cause passes by itself: tell the caller when to try again
    headers: tuple[tuple[bytes, bytes], ...] = ()


RULES: dict[ErrorKind, Rule] = {
    ErrorKind.OVERLOADED: Rule(429, "Too many requests in flight", retry_after=True),
    ErrorKind.NO_WORKER: Rule(503, "No worker available", retry_after=True),
    ErrorKind.WORKERS_LOST: Rule(503, "Workers died while scoring the request, more often than the retries allow",
                                 retry_after=True),
    ErrorKind.TIMEOUT: Rule(504, "Not scored within the request timeout"),
    ErrorKind.WORKER_FAILED: Rule(500, "A worker failed to score the request"),
    ErrorKind.BAD_REPLY: Rule(502, "The broker or a worker answered out of protocol"),
    ErrorKind.BAD_REQUEST: Rule(400, "A request the service could not read"),
    ErrorKind.TOO_LONG: Rule(413, "A text longer than the model's window, with truncation off"),
    ErrorKind.UNSUPPORTED: Rule(422, "An option the workers cannot honour"),
    ErrorKind.WRONG_POOL: Rule(500, "A worker of another pool (never expected in an answer)"),
    ErrorKind.INVALID_REQUEST: Rule(422, "Malformed request (the field is named in the message)"),
    ErrorKind.TOO_LARGE: Rule(413, "Too many sentences, a text too long, or a body too large "
                                   "(the limit is in the message)"),
    ErrorKind.NOT_READY: Rule(503, "The broker is not answering"),
    ErrorKind.SHUTTING_DOWN: Rule(503, "The gateway process is stopping", retry_after=True),
    ErrorKind.BODY_TIMEOUT: Rule(408, "The request body stopped arriving (the timeout is in the message)"),
    ErrorKind.UNSUPPORTED_MEDIA: Rule(415, "A Content-Type other than application/json"),
    ErrorKind.UNAUTHORIZED: Rule(401, "No valid API key: send Authorization: Bearer <key>",
                                 headers=((b"www-authenticate", b"Bearer"),)),
    ErrorKind.NOT_FOUND: Rule(404, "No such route"),
    ErrorKind.METHOD_NOT_ALLOWED: Rule(405, "The route does not take this method"),
    ErrorKind.WRONG_MODEL: Rule(404, "The request names a model this service does not serve (the one served "
                                     "is in the message)"),
}
RETRY_AFTER = (b"retry-after", b"1")  # seconds, where the error does not say


def openapi_responses(kinds: Iterable[ErrorKind]) -> dict[int, dict]:
    """The error responses a route can give, for its OpenAPI `responses`."""
    by_status: dict[int, list[str]] = {}
    for kind in kinds:
        by_status.setdefault(RULES[kind].status, []).append(RULES[kind].description)
    return {status: {"description": "; ".join(texts)} for status, texts in sorted(by_status.items())}


# A dialect: the JSON value of an error's body.
Dialect = Callable[[ServiceError], Any]


def detail_body(error: ServiceError) -> Any:
    """{"detail": message}, or {"detail": [errors]} for an invalid request: FastAPI's form."""
    return {"detail": error.message if error.errors is None else error.errors}


def api_body(error: ServiceError) -> Any:
    """The ecosystem routes' error: {"message", "error", "error_type"}, and for an invalid request the
    problems field by field in "errors" (the first ones also in the message)."""
    message = error.message
    body: dict[str, Any] = {}
    if error.errors is not None:
        problems = [{"field": ".".join(str(part) for part in e.get("loc", ())[1:]) or "body",
                     "message": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in error.errors]
        body["errors"] = problems
        message = "invalid request: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems[:3])
    return {"message": message, "error": message, "error_type": error.kind.value, **body}


# The paths of the ecosystem's APIs (Cohere v1/v2 and Jina under /v1 and /v2, TEI under /tei): their
# errors are written by api_body; every other path keeps detail_body.
API_PREFIXES = ("/v1/", "/v2/", "/tei/")


def dialect_for(path: str) -> Dialect:
    return api_body if path.startswith(API_PREFIXES) or path + "/" in API_PREFIXES else detail_body


def answer(error: ServiceError, dialect: Dialect = detail_body) -> Answer:
    rule = RULES[error.kind]
    headers = [retry_after(error)] if rule.retry_after else []
    return Answer(rule.status, render(dialect(error)), [*headers, *rule.headers])


def retry_after(error: ServiceError) -> tuple[bytes, bytes]:
    """The Retry-After header: whole seconds, at least 1."""
    if error.retry_after is None:
        return RETRY_AFTER
    return (b"retry-after", b"%d" % max(1, math.ceil(error.retry_after)))


def render(body: Any) -> bytes:
    """JSON as FastAPI's JSONResponse writes it (stdlib json: it also writes the >64-bit ints and the
    floats an invalid request may quote), with two differences where that would fail with a 500:
    a non-finite number a client sent (stdlib json reads NaN) comes back as null, and a lone
    surrogate escaped as it came (\\ud800)."""
    return json.dumps(_finite(body), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8", "backslashreplace")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def body_too_large(limit: int) -> ServiceError:
    return ServiceError(ErrorKind.TOO_LARGE, f"request body exceeds the limit of {limit} bytes (RERANKER_MAX_BODY_BYTES)")


# How much of a client's input an error may quote back (FastAPI's "input"): beyond it, the quote is left
# out. Writing back a whole body of a million values took seconds of a gateway process's CPU, and
# input nested a few hundred deep overflowed the stack of the (recursive) encoders: a 500.
QUOTE_VALUES = 1000
QUOTE_CHARS = 64 * 1024
QUOTE_DEPTH = 32


def _quotable(value: Any) -> bool:
    """Whether `value` holds at most QUOTE_VALUES values and QUOTE_CHARS characters, nested at most
    QUOTE_DEPTH deep; it looks at no more than that."""
    values, chars, todo = QUOTE_VALUES, QUOTE_CHARS, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        values -= 1
        if isinstance(item, str):
            chars -= len(item)
            if chars < 0:
                return False
        elif isinstance(item, (dict, list, tuple)):
            if depth == QUOTE_DEPTH or len(todo) + len(item) * (1 + isinstance(item, dict)) > values:
                return False
            inner = [x for pair in item.items() for x in pair] if isinstance(item, dict) else item
            todo.extend((x, depth + 1) for x in inner)
    return True


def invalid_request(errors: Sequence[dict]) -> ServiceError:
    """The error for a request body that fails validation; `errors` as pydantic lists them, less the
    quotes of inputs too large to write back."""
    errors = [e if _quotable(e.get("input")) else {k: v for k, v in e.items() if k != "input"} for e in errors]
    return ServiceError(ErrorKind.INVALID_REQUEST, "the request body is not valid", jsonable_encoder(errors))


async def request_validation_failed(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's handler for invalid requests, replaced so that they too are answered here."""
    return to_response(answer(invalid_request(exc.errors()), dialect_for(request.url.path)))


# FastAPI's own HTTP errors, by status, for the API routes' dialect.
HTTP_KINDS = {400: ErrorKind.BAD_REQUEST, 401: ErrorKind.UNAUTHORIZED, 404: ErrorKind.NOT_FOUND,
              405: ErrorKind.METHOD_NOT_ALLOWED, 413: ErrorKind.TOO_LARGE}


async def http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's own errors (404 for an unknown path, 405 for a wrong method, 400 for a body it cannot
    decode): in the API routes' dialect on their paths, FastAPI's {"detail": ...} elsewhere."""
    if dialect_for(request.url.path) is detail_body or exc.status_code not in HTTP_KINDS:
        return await http_exception_handler(request, exc)
    status, body, headers = answer(ServiceError(HTTP_KINDS[exc.status_code], str(exc.detail)), api_body)
    response = to_response(Answer(exc.status_code, body, headers))
    response.headers.update(exc.headers or {})  # 405's Allow
    return response
