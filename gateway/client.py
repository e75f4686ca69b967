"""A gateway process's asyncio connection to the broker.

One DEALER socket per process, made by start() in the app's lifespan, i.e.
after gunicorn has forked. Many requests share it: each carries a request id,
and one reader task resolves the waiting future when the broker answers.
Failures are raised as ServiceErrors of a kind (shared.protocol.ErrorKind).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import NamedTuple

import numpy as np
import zmq
import zmq.asyncio

from shared import protocol as p
from shared.protocol import ErrorKind
from shared.settings import Settings

from .errors import ServiceError

log = logging.getLogger("reranker.gateway")


class Scored(NamedTuple):
    scores: np.ndarray  # float32, one per sentence, in the sentences' order
    meta: dict          # the broker's timings: queue_ms, compute_ms, inference_ms


class BrokerClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context: zmq.asyncio.Context | None = None
        self.socket: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._prefix = b""
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect; call in the process and event loop that will use the client (after fork)."""
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        self.socket.connect(self.settings.frontend_url)
        self._prefix = b"%x:" % os.getpid()
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
                fut.set_exception(ServiceError(ErrorKind.SHUTTING_DOWN, "gateway is shutting down"))
        if self.socket is not None:
            self.socket.close(0)
            self.context.term()

    async def rerank(self, task: p.Task) -> Scored:
        """Scores for the task's (query, sentence) pairs, in the sentences' order, with timings."""
        msg = await self._call(p.REQUEST, p.encode_request_body(task), timeout=self.settings.request_timeout + 1.0)
        if msg.kind not in (p.REPLY, p.FAIL):
            raise ServiceError(ErrorKind.BAD_REPLY, f"unexpected {msg.name} from the broker")
        try:
            if msg.kind == p.FAIL:
                raise ServiceError(p.decode_kind(msg.args[1]), msg.args[2].decode("utf-8", "replace"))
            return Scored(p.decode_scores(msg.args[1], expected=len(task.sentences)),
                          p.decode_json_object(msg.args[2], "REPLY meta"))
        except p.ProtocolError as exc:
            raise ServiceError(ErrorKind.BAD_REPLY, f"malformed {msg.name} from the broker: {exc}") from None

    async def status(self, timeout: float = 1.0) -> dict:
        msg = await self._call(p.STATUS, timeout=timeout)
        if msg.kind != p.STATUS or len(msg.args) != 2:
            raise ServiceError(ErrorKind.BAD_REPLY, f"unexpected {msg.name} from the broker")
        try:
            return p.decode_json_object(msg.args[1], "STATUS body")
        except p.ProtocolError as exc:
            raise ServiceError(ErrorKind.BAD_REPLY, str(exc)) from None

    async def _call(self, kind: bytes, *args: bytes, timeout: float) -> p.Message:
        rid = self._prefix + b"%d" % next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            # The send is inside the timeout too: a DEALER with no broker connected blocks on send.
            return await asyncio.wait_for(self._send_and_wait(p.encode(kind, rid, *args), fut), timeout)
        except asyncio.TimeoutError:
            self._cancel(kind, rid)
            raise ServiceError(ErrorKind.TIMEOUT, f"the broker did not answer within {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller has gone
            self._cancel(kind, rid)
            raise
        finally:
            self._waiting.pop(rid, None)

    def _cancel(self, kind: bytes, rid: bytes) -> None:
        """Tell the broker a request's answer is no longer awaited, so it drops the work left (best effort)."""
        if kind == p.REQUEST:
            sent = self.socket.send_multipart(p.encode(p.CANCEL, rid), zmq.NOBLOCK)
            sent.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits: don't warn

    async def _send_and_wait(self, frames: list[bytes], fut: asyncio.Future) -> p.Message:
        await self.socket.send_multipart(frames)
        return await fut

    async def _read(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            try:
                msg = p.decode(frames)
            except p.ProtocolError as exc:
                log.warning("dropped a malformed message from the broker: %s", exc)
                continue
            if not msg.args:  # every answer names its request first
                log.warning("dropped an unexpected %s from the broker", msg.name)
                continue
            fut = self._waiting.get(msg.args[0])
            if fut is not None and not fut.done():
                fut.set_result(msg)
