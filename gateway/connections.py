"""HTTP connections: deadlines for slow and idle clients, a cap on header bytes, the worker class.

uvicorn closes an idle keep-alive connection (timeout_keep_alive) and answers 503 beyond
limit_concurrency, but it has no deadline for a request's headers, and its httptools protocol keeps
every header byte it is sent: a client that connects and sends nothing, or a header a minute, or
megabytes of headers, holds its connection (and the memory) for good. `GuardedHttpToolsProtocol`
adds what is missing:

- a header deadline: a request's headers must be complete within RERANKER_HEADER_TIMEOUT of the
  connection's start, or of the request's first byte on a kept-alive connection; else the
  connection is closed;
- a cap on the bytes of a request line and headers (MAX_HEADER_BYTES, h11's default): more gets 431
  and the connection is closed;
- a drain deadline: when a response goes out before its request's body came in whole (a 413 for
  a body over the limit), the client has RERANKER_BODY_TIMEOUT to finish sending it. (uvicorn would
  wait for it for ever: the data it reads cancels the keep-alive timer.)

A body that stalls while the app reads it is the app's side: gateway.asgi.BodyTimeout answers 408.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from shared.settings import Settings

# As h11 (uvicorn's other HTTP implementation) caps an incomplete request head by default.
MAX_HEADER_BYTES = 16 * 1024
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s")
_TOO_LARGE_BODY = b'{"detail":"the request line and headers exceed %d bytes"}' % MAX_HEADER_BYTES


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a drain deadline."""

    def __init__(self, *args: Any, header_timeout: float, drain_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.drain_timeout = drain_timeout
        self._awaiting_headers = True  # between a request's end (or the connection's start) and the next's headers
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self._deadline is None:  # the first bytes after an idle keep-alive: a request begins
                self._arm(self.header_timeout)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- httptools parser callbacks --------------------------------------------------
    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._disarm()  # the app has the request now
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True

    # -- uvicorn -----------------------------------------------------------------
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._awaiting_headers and not self.transport.is_closing():
            self._arm(self.drain_timeout)  # answered before its body came in whole: the rest must come soon


def worker_class(settings: Settings) -> type[UvicornWorker]:
    """The gunicorn worker class: uvicorn with the guarded protocol and the settings' limits."""
    protocol = functools.partial(GuardedHttpToolsProtocol, header_timeout=settings.header_timeout,
                                 drain_timeout=settings.body_timeout)
    config = {
        "loop": "auto",
        "http": protocol,
        "timeout_keep_alive": settings.keepalive_timeout,
        # gateway/tracing.py writes the access line where RERANKER_ACCESS_LOG asks for it; uvicorn's own
        # would log every request (gunicorn hands it the access logger at INFO)
        "access_log": False,
        # uvicorn counts the connection of the request it checks: N + 1 serves N connections at most
        "limit_concurrency": settings.max_connections + 1,
    }
    return type("GatewayWorker", (UvicornWorker,), {"CONFIG_KWARGS": config, "__module__": __name__})
