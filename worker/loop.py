"""The worker's connection to the broker (after the zguide's Paranoid Pirate worker).

The main thread owns the DEALER socket: it says READY, receives jobs, sends
heartbeats every interval and results when they are ready. Scoring runs in a
second thread, so heartbeats go on during long jobs; that thread hands each
result back over an inproc PAIR socket, which wakes the main thread's poll.
If the broker is silent for `liveness` intervals, or tells us to DISCONNECT,
the worker makes a new socket and announces itself again; while the broker
stays away, it waits longer between tries, from 1 s to 32 s. If the broker
REFUSEs it (another pool or protocol), the worker stops: `refused` says why.
After a big job the scoring thread hands the freed heap back to the system
(worker/memory.py), so that one big request does not keep its peak for good.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback

import zmq

from shared import curve
from shared import protocol as p
from shared.ratelimit import RateLimitedLog
from shared.settings import Settings

from . import health
from .jobs import score_job
from .memory import BIG_JOB_BYTES, trim_heap
from .scorer import Scorer

log = logging.getLogger("reranker.worker")

BACKOFF_MIN, BACKOFF_MAX = 1.0, 32.0


class WorkerLoop:
    def __init__(self, settings: Settings, scorer: Scorer, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.context = context or zmq.Context()
        self.info = {**scorer.info, "host": socket.gethostname(), "pid": os.getpid(),
                     "protocol": p.VERSION.decode(), "pool": settings.pool}
        self.stopping = threading.Event()
        self.busy_job: bytes | None = None
        self.jobs_done = 0
        self.socket: zmq.Socket | None = None
        self.broker_seen = 0.0  # wall-clock time of the last message from the broker
        self.refused: str | None = None  # why the broker would not take us, once it said so
        self._peers = RateLimitedLog(log)
        # results from the scoring thread
        self._results_in = self.context.socket(zmq.PAIR)
        self._results_addr = f"inproc://results-{id(self)}"
        self._results_in.bind(self._results_addr)
        self._results_out = self.context.socket(zmq.PAIR)
        self._results_out.connect(self._results_addr)  # used by the scoring thread only
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._score_forever, name="scorer", daemon=True).start()

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Finish the current job, then leave (SIGTERM)."""
        self.stopping.set()

    def run(self) -> None:
        interval = self.settings.heartbeat_interval
        liveness_limit = self.settings.heartbeat_liveness
        backoff = BACKOFF_MIN
        self._connect()
        liveness = liveness_limit
        next_heartbeat = time.monotonic() + interval
        poller = zmq.Poller()
        poller.register(self._results_in, zmq.POLLIN)
        poller.register(self.socket, zmq.POLLIN)
        while self.refused is None:
            if self.stopping.is_set() and self.busy_job is None:
                self._send(p.encode(p.DISCONNECT))
                break
            timeout = max(0.0, next_heartbeat - time.monotonic())
            events = dict(poller.poll(timeout * 1000))
            if self._results_in in events:
                self._forward_result()
            reconnect = False
            if self.socket in events:
                reconnect = self._on_broker()
                liveness = liveness_limit
                backoff = BACKOFF_MIN
                self.broker_seen = time.time()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + interval
                if self.socket not in events:
                    liveness -= 1
                self._send(p.encode(p.HEARTBEAT))
                self._peers.flush()
                health.write(self.settings.health_file, "busy" if self.busy_job else "idle", self.broker_seen)
            if liveness <= 0 or reconnect:
                if self.busy_job is not None:
                    continue  # finish first: a new broker would hand us work while we score
                poller.unregister(self.socket)
                self._connect()
                poller.register(self.socket, zmq.POLLIN)
                liveness = liveness_limit
                if not reconnect:
                    # Silent broker: reconnect now, then give it `backoff` seconds (1 s .. 32 s) before
                    # the next try; the loop keeps polling, heartbeating and writing health meanwhile.
                    log.warning("broker silent for %d heartbeats; reconnected, next try in %.0f s",
                                liveness_limit, backoff)
                    liveness = max(liveness_limit, round(backoff / interval))
                    backoff = min(backoff * 2, BACKOFF_MAX)
        self.close()

    def close(self) -> None:
        for sock in (self.socket, self._results_in, self._results_out):
            if sock is not None:
                sock.close(0)

    # -- broker side ---------------------------------------------------------
    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_bytes)
        curve.secure_worker_socket(self.socket, self.settings)  # CURVE when configured (shared/curve.py)
        self.socket.connect(self.settings.broker_url)
        self._send(p.encode(p.READY, p.encode_json(self.info)))
        log.info("worker %d: READY sent to %s", os.getpid(), self.settings.broker_url)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # no broker connected: heartbeats lost are lost; liveness will notice

    def _on_broker(self) -> bool:
        """Handle everything the broker sent; True if it asked us to reconnect."""
        reconnect = False
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return reconnect
            try:
                msg = p.decode(frames)
            except p.ProtocolError as exc:
                self._peers.warning("dropped a malformed message from the broker: %s", exc)
                continue
            if msg.kind == p.JOB:
                self._start_job(msg.args[0], msg.args[1])
            elif msg.kind == p.DISCONNECT:
                reconnect = True
            elif msg.kind == p.REFUSE:
                self.refused = msg.args[1].decode("utf-8", "replace")
                log.error("the broker at %s refused this worker: %s", self.settings.broker_url, self.refused)
                return False

    # -- scoring -----------------------------------------------------------------
    def _start_job(self, job_id: bytes, body: bytes) -> None:
        if self.busy_job is not None:
            self._send(p.encode(p.ERROR, job_id, p.encode_kind(p.ErrorKind.WORKER_FAILED), b"worker is busy"))
            return
        try:
            tasks = p.decode_job_body(body)
        except p.ProtocolError as exc:
            self._send(p.encode(p.ERROR, job_id, p.encode_kind(p.ErrorKind.BAD_REQUEST), str(exc).encode()))
            return
        self.busy_job = job_id
        log.debug("job %s: %d pairs", job_id.decode("ascii", "replace"), sum(len(t.sentences) for t in tasks),
                  extra={"request_id": ",".join(t.trace for t in tasks if t.trace)})
        self._jobs.put((job_id, tasks, len(body) >= BIG_JOB_BYTES))

    def _score_forever(self) -> None:
        """The scoring thread: one job at a time, results back over the inproc socket."""
        while True:
            job_id, tasks, big = self._jobs.get()
            started = time.perf_counter()
            tokens_before = getattr(self.scorer, "tokens", None)  # a model's scorer counts them; the stub not
            try:
                scores, failures = score_job(self.scorer, tasks)
                tokens = None if tokens_before is None else self.scorer.tokens - tokens_before
                meta = p.encode_result_meta((time.perf_counter() - started) * 1000, failures, tokens)
                frames = p.encode(p.RESULT, job_id, p.encode_scores(scores), meta)
            except Exception as exc:  # noqa: BLE001 - any failure goes back to the broker as ERROR
                traces = ",".join(t.trace for t in tasks if t.trace)
                log.error("job %s (requests %s) failed:\n%s", job_id, traces or "-", traceback.format_exc())
                frames = p.encode(p.ERROR, job_id, p.encode_kind(p.ErrorKind.WORKER_FAILED),
                                  f"{type(exc).__name__}: {exc}".encode())
            self._results_out.send_multipart(frames)
            del tasks, frames
            if big:
                trim_heap()

    def _forward_result(self) -> None:
        frames = self._results_in.recv_multipart()
        self.busy_job = None
        self.jobs_done += 1
        self._send(frames)
