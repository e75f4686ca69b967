"""The load-balancing broker: a small poll loop around the Scheduler.

Two ROUTER sockets, as in the zguide's lbbroker/ppqueue: the frontend (bound
on a local endpoint) serves the gateway processes, the backend (bound on
RERANKER_WORKERS_BIND) serves workers, which connect to it. The loop moves
messages between the sockets and the Scheduler, sends heartbeats to
workers and answers the gateway processes' PINGs with its epoch (a new one
each time the broker starts: shared/protocol.py says what clients do with
it); all decisions are the Scheduler's. The broker's own judgements are of
what reaches it: a worker it cannot send to is gone at once, and a worker
that sends what it should not is dropped. Lines about peers' messages are
rate-limited, so that a peer cannot flood the log.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

import zmq

from shared import curve
from shared import protocol as p
from shared.endpoints import ipc_listened
from shared.logs import setup_logging
from shared.ratelimit import RateLimitedLog
from shared.settings import Settings

from .cache import ScoreCache
from .scheduler import Disconnect, Fail, Reply, Scheduler, SendJob

log = logging.getLogger("reranker.broker")

# Work goes to workers heard from within this many heartbeat intervals (one, and half of one for lateness).
FRESH_HEARTBEATS = 1.5


def make_scheduler(settings: Settings, job_prefix: bytes = b"") -> Scheduler:
    expiry = settings.heartbeat_interval * settings.heartbeat_liveness
    return Scheduler(
        heartbeat_expiry=expiry,
        request_timeout=settings.request_timeout,
        no_worker_grace=settings.no_worker_grace,
        max_batch_pairs=settings.max_batch_pairs,
        min_split_pairs=settings.min_split_pairs,
        max_retries=settings.max_retries,
        max_queued=settings.max_queued,
        max_queued_pairs=settings.max_queued_pairs,
        fresh_within=settings.heartbeat_interval * FRESH_HEARTBEATS,
        # A job is taken back from a worker that holds it well past its measured rate, but never
        # sooner than this: time for several tries within one request timeout, and well past a
        # heartbeat expiry (a dead worker is purged first).
        job_floor=max(2 * expiry, settings.request_timeout / 4),
        job_prefix=job_prefix,
        cache=ScoreCache(settings.cache_bytes) if settings.cache_bytes else None,
    )


class Broker:
    def __init__(self, settings: Settings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.epoch = os.urandom(8).hex().encode()  # this broker's life: clients re-send when it changes
        self.scheduler = make_scheduler(settings, job_prefix=self.epoch + b"/")
        # A broker that has just started (again) gives the workers a heartbeat expiry to find it (they
        # notice a restart at their next heartbeat) before the no-worker grace starts counting.
        self.scheduler.no_workers_since = time.monotonic() + self.scheduler.heartbeat_expiry
        self.peers = RateLimitedLog(log)
        self.gatekeeper: curve.Gatekeeper | None = None
        self.frontend = self._router(settings.frontend_url)
        self.backend = self._router(settings.workers_bind, workers=True)
        self.running = False

    def _router(self, endpoint: str, workers: bool = False) -> zmq.Socket:
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            if ipc_listened(path):  # binding would take the endpoint from a live broker
                raise zmq.ZMQError(errno.EADDRINUSE, f"{endpoint} is in use by another broker")
            Path(path).unlink(missing_ok=True)  # a stale file from a crashed broker
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable peers raise instead of vanishing
        if workers:  # CURVE and the allow-list of workers, when configured; before bind, which fixes them
            self.gatekeeper = curve.protect_workers_port(sock, self.settings)
        sock.bind(endpoint)
        return sock

    def run(self, parent: int | None = None) -> None:
        """Serve until stop(), or until the process `parent` is gone (then nobody supervises us)."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        interval = self.settings.heartbeat_interval
        next_heartbeat = time.monotonic() + interval
        self.running = True
        log.info("broker: workers at %s, gateway at %s", self.settings.workers_bind, self.settings.frontend_url)
        while self.running:
            now = time.monotonic()
            wake = min(next_heartbeat, self.scheduler.next_deadline() or next_heartbeat)
            events = dict(poller.poll(max(0.0, wake - now) * 1000))
            now = time.monotonic()
            if self.backend in events:
                self._drain(self.backend, self._on_worker, now)
            if self.frontend in events:
                self._drain(self.frontend, self._on_client, now)
            self.scheduler.tick(now)
            if parent is not None and os.getppid() != parent:
                log.error("the gateway process %d is gone; broker exits", parent)
                break
            if now >= next_heartbeat:
                heartbeat = p.encode(p.HEARTBEAT)
                gone = [identity for identity in self.scheduler.workers
                        if not self._send(self.backend, identity, heartbeat)]
                if gone:  # their connections are closed: they are dead, not late
                    self.scheduler.purge(gone, now)
                next_heartbeat = now + interval
                self.peers.flush()
            self._flush()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        for sock in (self.frontend, self.backend):
            sock.close(0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()

    # -- inbound ---------------------------------------------------------------
    def _drain(self, sock: zmq.Socket, handler, now: float) -> None:
        """Read everything waiting on a socket, so that one side cannot starve the other."""
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            try:
                handler(identity, p.decode(body), now)
            except p.ProtocolError as exc:
                self.peers.warning("dropped a malformed message from %s: %s", identity.hex(), exc)
                if sock is self.backend and identity in self.scheduler.workers:
                    self.scheduler.drop_worker(identity, now, f"malformed message: {exc}")
            self._flush()

    def _on_worker(self, identity: bytes, msg: p.Message, now: float) -> None:
        s = self.scheduler
        if msg.kind == p.READY:
            self._on_ready(identity, msg.args[0], now)
        elif not s.worker_seen(identity, now):
            if msg.kind != p.DISCONNECT:
                # Unknown worker (we restarted, or purged it): tell it to start over.
                self._send(self.backend, identity, p.encode(p.DISCONNECT))
        elif msg.kind == p.RESULT:  # malformed scores or meta raise: the worker is dropped (_drain)
            job = s.jobs.get(msg.args[0])
            tasks = len(job.owners) if job is not None else 0
            compute_ms, errors, tokens = p.decode_result_meta(msg.args[2], tasks)
            s.job_done(identity, msg.args[0], p.decode_scores(msg.args[1]), now, compute_ms, errors, tokens)
        elif msg.kind == p.ERROR:
            s.job_failed(identity, msg.args[0], p.decode_kind(msg.args[1]), msg.args[2].decode("utf-8", "replace"), now)
        elif msg.kind == p.DISCONNECT:
            self.peers.info("worker %s left", identity.hex())
            s.worker_gone(identity, now, graceful=True)
        elif msg.kind != p.HEARTBEAT:
            raise p.ProtocolError(f"a worker does not send {msg.name}")

    def _on_ready(self, identity: bytes, raw: bytes, now: float) -> None:
        """A worker announces itself: it joins the pool if it speaks this protocol and names this pool."""
        try:
            info = p.decode_ready_info(raw)
        except p.ProtocolError as exc:
            return self._refuse(identity, p.ErrorKind.BAD_REQUEST, f"malformed READY: {exc}")
        if info["pool"] != self.settings.pool:
            return self._refuse(identity, p.ErrorKind.WRONG_POOL,
                                f"this broker serves pool {self.settings.pool!r}, not {info['pool']!r} "
                                "(RERANKER_POOL must be the same on the gateway and its workers)")
        self.peers.info("worker %s ready: %s", identity.hex(), info)
        self.scheduler.worker_ready(identity, info, now)

    def _refuse(self, identity: bytes, kind: p.ErrorKind, message: str) -> None:
        self.peers.warning("refused worker %s: %s", identity.hex(), message)
        self._send(self.backend, identity, p.encode(p.REFUSE, p.encode_kind(kind), message.encode()))

    def _on_client(self, identity: bytes, msg: p.Message, now: float) -> None:
        if msg.kind == p.REQUEST:
            rid = msg.args[0]
            try:
                task = p.decode_request_body(msg.args[1])
            except p.ProtocolError as exc:
                self._send(self.frontend, identity,
                           p.encode(p.FAIL, rid, p.encode_kind(p.ErrorKind.BAD_REQUEST), str(exc).encode()))
                return
            log.debug("request %s: %d sentences", rid.decode("ascii", "replace"), len(task.sentences),
                      extra={"request_id": task.trace})
            self.scheduler.submit(identity, rid, task, now)
        elif msg.kind == p.CANCEL:
            self.scheduler.cancel(identity, msg.args[0])
        elif msg.kind == p.PING:
            self._send(self.frontend, identity, p.encode(p.PONG, self.epoch))
        elif msg.kind == p.STATUS:
            body = p.encode_json(self.scheduler.status())
            self._send(self.frontend, identity, p.encode(p.STATUS, msg.args[0], body))
        else:
            self.peers.warning("unexpected %s from gateway process %s", msg.name, identity.hex())

    # -- outbound --------------------------------------------------------------
    def _flush(self) -> None:
        while self.scheduler.outbox:
            self._send_actions(self.scheduler.drain())

    def _send_actions(self, actions) -> None:
        for action in actions:
            if isinstance(action, SendJob):
                body = p.encode_job_body(action.tasks)
                log.debug("job %s to worker %s: %d tasks", action.job_id.decode(), action.worker.hex(),
                          len(action.tasks), extra={"request_id": ",".join(t.trace for t in action.tasks if t.trace)})
                # Reading EVENTS makes the socket take in what its I/O thread knows (as sends do only
                # now and then): a peer whose connection has closed is then unroutable, and the send
                # below fails instead of dropping the job into a pipe that is going away.
                self.backend.getsockopt(zmq.EVENTS)
                if not self._send(self.backend, action.worker, p.encode(p.JOB, action.job_id, body)):
                    # Gone before the job left: the job never started, so it costs no retry.
                    self.scheduler.worker_gone(action.worker, time.monotonic(), graceful=True)
            elif isinstance(action, Reply):
                self._send(self.frontend, action.client, p.encode(p.REPLY, action.rid, p.encode_scores(action.scores),
                                                                 p.encode_json(action.meta)))
            elif isinstance(action, Fail):
                frames = p.encode(p.FAIL, action.rid, p.encode_kind(action.kind), action.message.encode())
                if action.retry_after is not None:
                    frames.append(p.encode_retry_after(action.retry_after))
                self._send(self.frontend, action.client, frames)
            elif isinstance(action, Disconnect):
                self.peers.warning("dropped worker %s: %s", action.worker.hex(), action.reason)
                self._send(self.backend, action.worker, p.encode(p.DISCONNECT))

    def _send(self, sock: zmq.Socket, identity: bytes, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
            self.peers.warning("could not send to %s: %s", identity.hex(), exc)
            return False


def run_broker(settings: Settings) -> None:
    """Entry point of the broker process."""
    setup_logging(settings, "broker")
    # Our own process group: a Ctrl-C or SIGTERM meant for gunicorn's group must not stop the broker
    # under requests still draining; the supervisor stops it after gunicorn, or it exits when
    # its parent is gone.
    os.setpgrp()
    parent = os.getppid()
    broker = Broker(settings)
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    signal.signal(signal.SIGINT, lambda *_: broker.stop())
    try:
        broker.run(parent)
    finally:
        broker.close()
        log.info("broker %d stopped", os.getpid())
