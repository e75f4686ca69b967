"""The real broker loop in a thread of the test, with peers on real sockets: raw ZeroMQ sockets that
act as gateway processes or as workers (good, broken or hostile), and real WorkerLoops with the stub
scorer. Protocol-level fault tests drive these; tests/service.py runs whole processes instead.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from devkit.procs import free_port
from gateway.broker import Broker
from shared import protocol as p
from shared.settings import Settings
from worker.loop import WorkerLoop
from worker.stub import StubScorer, stub_score

QUERY = "red apple pie"
SENTENCES = ["red apple", "green pie", "nothing", "apple pie recipe"]
READY_INFO = {"protocol": p.VERSION.decode(), "pool": "reranker", "model": "fake", "backend": "stub",
              "precision": "none", "max_length": None, "host": "test", "pid": 1}


class InprocBroker:
    """A Broker serving in a thread; stop() ends it. Heartbeats are fast (0.1 s x 5) by default."""

    def __init__(self, tmp: Path, **settings) -> None:
        port = free_port()
        values = dict(frontend_url=f"ipc://{tmp}/frontend-{port}.ipc", workers_bind=f"tcp://127.0.0.1:{port}",
                      broker_url=f"tcp://127.0.0.1:{port}", heartbeat_interval=0.1, heartbeat_liveness=5,
                      request_timeout=10, no_worker_grace=2, health_file=str(tmp / f"health-{port}.json"))
        values.update(settings)
        self.settings = Settings(**values)
        self.context = zmq.Context()
        self.context.setsockopt(zmq.MAX_SOCKETS, 4096)
        self.broker = Broker(self.settings, self.context)
        self.thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
        self.thread.start()
        self.loops: list[tuple[WorkerLoop, threading.Thread]] = []
        self.sockets: list[zmq.Socket] = []

    def stop(self) -> None:
        for loop, _ in self.loops:
            loop.stop()
        for _, thread in self.loops:
            thread.join(5)
        self.broker.stop()
        self.thread.join(10)
        self.broker.close()
        for sock in self.sockets:
            sock.close(0)
        # Every socket is closed by its own thread by now (destroy() would close them from this one,
        # under the threads that watch their handshakes): term() returns once libzmq has let go.
        ending = threading.Thread(target=self.context.term, daemon=True)
        ending.start()
        ending.join(10)

    # -- peers ------------------------------------------------------------------
    def socket(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def caller(self) -> "Caller":
        return Caller(self.socket(self.settings.frontend_url))

    def peer(self, ready: bool = True, info: dict | None = None) -> "Peer":
        peer = Peer(self.socket(self.settings.broker_url))
        if ready:
            peer.send(p.READY, p.encode_json(info or READY_INFO))
        return peer

    def good_worker(self, **settings) -> WorkerLoop:
        """A real WorkerLoop with the stub scorer, serving in a thread."""
        s = self.settings.model_copy(update={"backend": "stub", **settings})
        loop = WorkerLoop(s, StubScorer(s), self.context)
        thread = threading.Thread(target=loop.run, name="worker", daemon=True)
        thread.start()
        self.loops.append((loop, thread))
        return loop

    def wait_workers(self, n: int, timeout: float = 10) -> dict:
        caller = self.caller()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = caller.status()
            if status.get("workers") == n:
                return status
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {n} workers: {status}")


class Caller:
    """A raw gateway-process socket: REQUESTs out, every answer kept (duplicates included)."""

    _ids = itertools.count(1)

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.answers: dict[bytes, list[p.Message]] = {}

    def request(self, query: str, sentences: list[str]) -> bytes:
        rid = b"r%d" % next(self._ids)
        self.sock.send_multipart(p.encode(p.REQUEST, rid, p.encode_request_body(p.Task(query, sentences))))
        return rid

    def collect(self, rids: list[bytes], timeout: float, linger: float = 0.3) -> dict[bytes, list[p.Message]]:
        """Answers until every rid has one (or `timeout`), then `linger` seconds more for duplicates."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(r in self.answers for r in rids):
            self._read(deadline - time.monotonic())
        end = time.monotonic() + linger
        while time.monotonic() < end:
            self._read(end - time.monotonic())
        return {r: self.answers.get(r, []) for r in rids}

    def status(self) -> dict:
        self.sock.send_multipart(p.encode(p.STATUS, b"status"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = self._read(deadline - time.monotonic())
            if msg is not None and msg.kind == p.STATUS:
                return p.decode_json_object(msg.args[1], "STATUS body")
        return {}

    def _read(self, timeout: float) -> p.Message | None:
        if not self.sock.poll(max(1, int(timeout * 1000))):
            return None
        msg = p.decode(self.sock.recv_multipart())
        if msg.kind in (p.REPLY, p.FAIL):
            self.answers.setdefault(msg.args[0], []).append(msg)
        return msg


class Peer:
    """A raw socket on the workers port, playing a worker as the test says."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.got: list[p.Message] = []

    def send(self, kind: bytes, *args: bytes) -> None:
        self.sock.send_multipart(p.encode(kind, *args))

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def next(self, kind: bytes, timeout: float = 5) -> p.Message | None:
        """The next message of `kind` from the broker (others are kept in `got`), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                msg = p.decode(self.sock.recv_multipart())
                self.got.append(msg)
                if msg.kind == kind:
                    return msg
        return None

    def answer(self, job: p.Message) -> None:
        """Answer a JOB as a good worker would."""
        tasks = p.decode_job_body(job.args[1])
        scores = np.array([stub_score(t.query, s) for t in tasks for s in t.sentences], dtype=np.float32)
        self.send(p.RESULT, job.args[0], p.encode_scores(scores), p.encode_result_meta(1.0))

    def close(self) -> None:
        self.sock.close(0)


def stub_scores(query: str, sentences: list[str]) -> list[float]:
    return np.array([stub_score(query, s) for s in sentences], dtype=np.float32).tolist()


def scores_of(msg: p.Message) -> list[float]:
    assert msg.kind == p.REPLY, (msg.name, msg.args[1:])
    return p.decode_scores(msg.args[1]).tolist()


def job_pairs(job: p.Message) -> int:
    return sum(len(t.sentences) for t in p.decode_job_body(job.args[1]))
