"""A gateway process's asyncio connection to the broker.

One DEALER socket per process, made by start() in the app's lifespan, i.e.
after gunicorn has forked. Many requests share it: each carries a request id,
and one reader task resolves the waiting future when the broker answers.
Failures are raised as ServiceErrors of a kind (shared.protocol.ErrorKind).

The client pings the broker every heartbeat interval and keeps the REQUESTs it
has sent and not had answered; when the broker's epoch in a PONG changes (the
broker was restarted), it sends them again (shared/protocol.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import zmq
import zmq.asyncio

from shared import protocol as p
from shared.protocol import ErrorKind
from shared.ratelimit import RateLimitedLog
from shared.settings import Settings

from .errors import ServiceError

log = logging.getLogger("reranker.gateway")


class Scored(NamedTuple):
    scores: np.ndarray  # float32, one per sentence, in the sentences' order
    meta: dict          # the broker's timings: queue_ms, compute_ms, inference_ms


@dataclass
class Sent:
    """A REQUEST not answered yet, and the broker epoch it was last sent under (None: before the
    first PONG)."""
    frames: list[bytes]
    epoch: bytes | None


class BrokerClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context: zmq.asyncio.Context | None = None
        self.socket: zmq.asyncio.Socket | None = None
        self.epoch: bytes | None = None  # the broker's, from its last PONG
        self.resent = 0  # requests sent again to a restarted broker
        self._ids = itertools.count(1)
        self._prefix = b""
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._unanswered: dict[bytes, Sent] = {}
        self._tasks: list[asyncio.Task] = []
        self._peers = RateLimitedLog(log)

    async def start(self) -> None:
        """Connect; call in the process and event loop that will use the client (after fork)."""
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        self.socket.connect(self.settings.frontend_url)
        self._prefix = b"%x:" % os.getpid()
        self._tasks = [asyncio.create_task(self._read(), name="broker-reader"),
                       asyncio.create_task(self._ping(), name="broker-ping")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
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
                retry_after = p.decode_retry_after(msg.args[3]) if len(msg.args) > 3 else None
                raise ServiceError(p.decode_kind(msg.args[1]), msg.args[2].decode("utf-8", "replace"),
                                   retry_after=retry_after)
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
        frames = p.encode(kind, rid, *args)
        if kind == p.REQUEST:
            self._unanswered[rid] = Sent(frames, self.epoch)
        try:
            # The send is inside the timeout too: a DEALER with no broker connected blocks on send.
            return await asyncio.wait_for(self._send_and_wait(frames, fut), timeout)
        except asyncio.TimeoutError:
            self._cancel(kind, rid)
            raise ServiceError(ErrorKind.TIMEOUT, f"the broker did not answer within {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller has gone
            self._cancel(kind, rid)
            raise
        finally:
            self._waiting.pop(rid, None)
            self._unanswered.pop(rid, None)

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
                self._peers.warning("dropped a malformed message from the broker: %s", exc)
                continue
            if msg.kind == p.PONG:
                self._on_pong(msg.args[0])
                continue
            if not msg.args or msg.kind not in (p.REPLY, p.FAIL, p.STATUS):  # answers name their request
                self._peers.warning("dropped an unexpected %s from the broker", msg.name)
                continue
            fut = self._waiting.get(msg.args[0])
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _ping(self) -> None:
        """Ask the broker for its epoch every heartbeat interval (it answers PONG)."""
        while True:
            await self.socket.send_multipart(p.encode(p.PING))
            self._peers.flush()
            await asyncio.sleep(self.settings.heartbeat_interval)

    def _on_pong(self, epoch: bytes) -> None:
        if epoch == self.epoch:
            return
        behind = [sent for sent in self._unanswered.values() if sent.epoch != epoch]
        if self.epoch is not None and behind:
            log.warning("the broker restarted: sending it again the %d requests it had not answered", len(behind))
        self.epoch = epoch
        if behind:
            self._tasks.append(asyncio.create_task(self._send_again(behind, epoch), name="broker-resend"))
            self._tasks = [t for t in self._tasks if not t.done()]

    async def _send_again(self, requests: list[Sent], epoch: bytes) -> None:
        for sent in requests:
            if sent.epoch != epoch:
                sent.epoch = epoch
                self.resent += 1
                await self.socket.send_multipart(sent.frames)
