"""A gateway process's asyncio connection to the broker.

One DEALER socket per process, made after fork (in the app's lifespan). Many
requests share it: each carries a request id, and one reader task resolves the
waiting future when the broker answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os

import numpy as np
import zmq
import zmq.asyncio

from shared import protocol as p
from shared.settings import Settings


class ServiceError(Exception):
    """A request the service could not score; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BrokerClient:
    def __init__(self, settings: Settings, context: zmq.asyncio.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.asyncio.Context()
        self._own_context = context is None
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
        self.socket.connect(settings.frontend_url)
        self._ids = itertools.count(1)
        self._prefix = b"%x:" % os.getpid()
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="broker-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ServiceError(503, "gateway is shutting down"))
        self.socket.close(0)
        if self._own_context:
            self.context.term()

    async def rerank(self, query: str, sentences: list[str]) -> np.ndarray:
        """Scores for (query, sentence) pairs, in the sentences' order."""
        msg = await self._call(p.REQUEST, p.encode_request_body(query, sentences),
                               timeout=self.settings.request_timeout + 1.0)
        if msg.kind == p.REPLY:
            return p.decode_scores(msg.args[1], expected=len(sentences))
        if msg.kind == p.FAIL:
            raise ServiceError(p.decode_status_code(msg.args[1]), msg.args[2].decode("utf-8", "replace"))
        raise ServiceError(502, f"unexpected {msg.name} from the broker")

    async def status(self, timeout: float = 1.0) -> dict:
        msg = await self._call(p.STATUS, timeout=timeout)
        if msg.kind != p.STATUS or len(msg.args) != 2:
            raise ServiceError(502, f"unexpected {msg.name} from the broker")
        return p.decode_json_object(msg.args[1], "STATUS body")

    async def _call(self, kind: bytes, *args: bytes, timeout: float) -> p.Message:
        rid = self._prefix + b"%d" % next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            # The send is inside the timeout too: a DEALER with no broker connected blocks on send.
            return await asyncio.wait_for(self._send_and_wait(p.encode(kind, rid, *args), fut), timeout)
        except asyncio.TimeoutError:
            raise ServiceError(504, f"the broker did not answer within {timeout:g} s") from None
        finally:
            self._waiting.pop(rid, None)

    async def _send_and_wait(self, frames: list[bytes], fut: asyncio.Future) -> p.Message:
        await self.socket.send_multipart(frames)
        return await fut

    async def _read(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            try:
                msg = p.decode(frames)
            except p.ProtocolError:
                continue
            if not msg.args:
                continue
            fut = self._waiting.get(msg.args[0])
            if fut is not None and not fut.done():
                fut.set_result(msg)
