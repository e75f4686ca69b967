"""The outermost layer: every HTTP request gets a request id, is counted, timed and logged.

The id is the caller's X-Request-ID where it is sane (1 to 128 visible ASCII characters of the usual
kinds), else a new one; the response carries it back in X-Request-ID. While the request runs,
shared.logs.REQUEST_ID holds it: the gateway's log lines about the request carry it, and the broker
client sends it with the task (Task.trace), so the broker's and the worker's lines carry it too.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import REQUEST_ID

from .metrics import GatewayMetrics

log = logging.getLogger("reranker.gateway.access")

_SANE = re.compile(rb"[A-Za-z0-9._:+=/@-]{1,128}")
GONE = 499  # the client left before an answer was sent (nginx's number for it)


def request_id(headers) -> bytes:
    given = next((v for k, v in headers if k == b"x-request-id"), None)
    return given if given is not None and _SANE.fullmatch(given) else os.urandom(16).hex().encode()


class RequestTracing:
    """`routes`: the paths counted by name; any other is counted as "other" (so that a scan of random
    paths cannot make new time series)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, routes: frozenset[str], access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope["headers"])
        token = REQUEST_ID.set(rid.decode("ascii"))
        path = scope["path"]
        started = time.perf_counter()
        status = GONE

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", rid)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope["path"] if scope["path"] in self.routes else "other"  # the route that answered
            self.metrics.answered(route, status, elapsed)
            if self.access_log:
                log.info("%s %s %d %.1f ms", scope["method"], path, status, elapsed * 1000)
            REQUEST_ID.reset(token)
