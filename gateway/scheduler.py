"""The broker's bookkeeping, without sockets or clocks (tested without sleeps).

Events come in as method calls with the current time; what must be sent comes
out as actions in `outbox`, which the broker loop drains and puts on the wire.

- Workers announce READY and are idle; work goes to idle workers only.
- A request's sentences wait in a FIFO of pieces. An idle worker is handed a
  job of up to `max_batch_pairs` pairs, no more than its fair share of what is
  queued (but not less than `min_split_pairs`), taken from the head of the FIFO: a big request is split across idle
  workers in equal pieces, small concurrent ones are merged into one job. Scores are
  independent per pair, so the merged result equals the unsplit one.
- A worker that is silent past its expiry is purged; the pieces of its job go
  back to the head of the FIFO, at most `max_retries` times each.
- A request that is past its deadline fails (TIMEOUT); one that waits while no
  worker is connected fails (NO_WORKER) after `no_worker_grace`. Failures are
  ErrorKinds; what they mean in HTTP is the gateway's business (gateway/errors.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from shared.protocol import ErrorKind, Task


@dataclass
class Request:
    client: bytes
    rid: bytes
    task: Task
    received: float
    deadline: float
    scores: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    done: bool = False
    cut: int = 0  # piece size, once a request too big for one round of the idle workers is split
    started: float | None = None  # when its first piece went to a worker
    inference_ms: float = 0.0  # its share of the workers' compute time

    def __post_init__(self) -> None:
        self.scores = np.empty(len(self.task.sentences), dtype=np.float32)
        self.remaining = len(self.task.sentences)

    def timings(self, now: float) -> dict:
        """What the REPLY's meta says of this request's time: waiting, then being scored."""
        started = self.received if self.started is None else self.started
        return {"queue_ms": round((started - self.received) * 1000, 3),
                "compute_ms": round((now - started) * 1000, 3),
                "inference_ms": round(self.inference_ms, 3)}


@dataclass
class Piece:
    """Sentences start..stop of one request."""
    request: Request
    start: int
    stop: int
    attempts: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class Job:
    id: bytes
    worker: bytes
    pieces: list[Piece]
    started: float
    owners: list[Request] = field(default_factory=list)  # the request of each task, in task order


@dataclass
class WorkerState:
    identity: bytes
    info: dict
    expiry: float
    job: Job | None = None
    jobs_done: int = 0
    pairs_done: int = 0


# Actions for the broker loop.
@dataclass(frozen=True)
class SendJob:
    worker: bytes
    job_id: bytes
    tasks: list[Task]


@dataclass(frozen=True)
class Reply:
    client: bytes
    rid: bytes
    scores: np.ndarray
    meta: dict = field(default_factory=dict)  # timings (Request.timings)


@dataclass(frozen=True)
class Fail:
    client: bytes
    rid: bytes
    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Disconnect:
    worker: bytes


Action = Union[SendJob, Reply, Fail, Disconnect]


# What /ready and /info show of each worker, from its READY info.
POOL_FIELDS = ("host", "pid", "model", "backend", "precision", "max_length")


class Scheduler:
    def __init__(self, *, heartbeat_expiry: float, request_timeout: float, no_worker_grace: float,
                 max_batch_pairs: int, max_retries: int, max_queued: int, min_split_pairs: int = 1) -> None:
        self.heartbeat_expiry = heartbeat_expiry
        self.request_timeout = request_timeout
        self.no_worker_grace = no_worker_grace
        self.max_batch_pairs = max_batch_pairs
        self.min_split_pairs = min(min_split_pairs, max_batch_pairs)
        self.max_retries = max_retries
        self.max_queued = max_queued
        self.workers: dict[bytes, WorkerState] = {}
        self.idle: OrderedDict[bytes, None] = OrderedDict()  # longest idle first
        self.queue: deque[Piece] = deque()
        self.requests: dict[tuple[bytes, bytes], Request] = {}
        self.jobs: dict[bytes, Job] = {}
        self.no_workers_since = 0.0
        self.outbox: list[Action] = []
        self._next_job = 0
        self.stats = {"requests": 0, "pairs": 0, "failed": 0, "redispatched": 0, "purged": 0, "cancelled": 0}

    # -- introspection --------------------------------------------------
    def status(self) -> dict:
        return {
            "workers": len(self.workers),
            "idle": len(self.idle),
            "queued": sum(p.size for p in self.queue if not p.request.done),
            "running": len(self.requests),
            **self.stats,
            "pool": [
                {**{k: w.info.get(k) for k in POOL_FIELDS}, "busy": w.job is not None,
                 "jobs": w.jobs_done, "pairs": w.pairs_done}
                for w in self.workers.values()
            ],
        }

    def drain(self) -> list[Action]:
        out, self.outbox = self.outbox, []
        return out

    # -- workers ----------------------------------------------------------
    def worker_ready(self, identity: bytes, info: dict, now: float) -> None:
        if identity in self.workers:  # re-announced: whatever it held is lost
            self.worker_gone(identity, now)
        self.workers[identity] = WorkerState(identity, info, now + self.heartbeat_expiry)
        self.idle[identity] = None
        self.dispatch(now)

    def worker_seen(self, identity: bytes, now: float) -> bool:
        """Any message from a worker proves it alive. False if it is unknown."""
        worker = self.workers.get(identity)
        if worker is None:
            return False
        worker.expiry = now + self.heartbeat_expiry
        return True

    def worker_gone(self, identity: bytes, now: float, graceful: bool = False) -> None:
        """A worker died (purged, unroutable) or left (`graceful`: it said DISCONNECT when idle,
        so a job just sent to it never started and does not count against the retries)."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return
        self.idle.pop(identity, None)
        if not self.workers:
            self.no_workers_since = now
        if worker.job is not None:
            self._requeue(self.jobs.pop(worker.job.id), count=not graceful)
        self.dispatch(now)

    def job_done(self, identity: bytes, job_id: bytes, scores: np.ndarray, now: float, compute_ms: float = 0.0,
                 errors: dict[int, tuple[ErrorKind, str]] | None = None) -> None:
        """A RESULT: the job's scores, the worker's compute time, and the tasks that failed alone
        ({task index: (kind, message)}: those requests fail, the others get their scores)."""
        job = self._finish_job(identity, job_id, now)
        if job is None:
            return
        expected = sum(p.size for p in job.pieces)
        if scores.shape[0] != expected:
            self._fail_job(job, ErrorKind.BAD_REPLY, f"worker returned {scores.shape[0]} scores for {expected} pairs")
        else:
            for index, (kind, message) in (errors or {}).items():
                self._fail(job.owners[index], kind, message)
            offset = 0
            for piece in job.pieces:
                req = piece.request
                if not req.done:
                    req.scores[piece.start:piece.stop] = scores[offset:offset + piece.size]
                    req.inference_ms += compute_ms * piece.size / expected
                    req.remaining -= piece.size
                    if req.remaining == 0:
                        self._close(req)
                        self.outbox.append(Reply(req.client, req.rid, req.scores, req.timings(now)))
                offset += piece.size
        self.dispatch(now)

    def job_failed(self, identity: bytes, job_id: bytes, kind: ErrorKind, message: str, now: float) -> None:
        job = self._finish_job(identity, job_id, now)
        if job is not None:
            self._fail_job(job, kind, f"worker failed to score: {message}")
        self.dispatch(now)

    # -- requests ---------------------------------------------------------
    def submit(self, client: bytes, rid: bytes, task: Task, now: float) -> None:
        if len(self.requests) >= self.max_queued:
            self.stats["failed"] += 1
            self.outbox.append(Fail(client, rid, ErrorKind.OVERLOADED,
                                    f"too many requests in flight (limit {self.max_queued}); retry later"))
            return
        req = Request(client, rid, task, now, now + self.request_timeout)
        self.stats["requests"] += 1
        self.stats["pairs"] += req.remaining
        if not req.remaining:
            self.outbox.append(Reply(client, rid, req.scores, req.timings(now)))
            return
        self.requests[(client, rid)] = req
        self.queue.append(Piece(req, 0, req.remaining))
        self.dispatch(now)

    def cancel(self, client: bytes, rid: bytes) -> None:
        """The caller has gone: its queued pieces are dropped, results still to come are discarded."""
        req = self.requests.get((client, rid))
        if req is not None:
            self.stats["cancelled"] += 1
            self._close(req)

    def tick(self, now: float) -> None:
        """Purge silent workers and expire requests; call at least once a heartbeat."""
        for worker in [w for w in self.workers.values() if w.expiry <= now]:
            self.stats["purged"] += 1
            self.worker_gone(worker.identity, now)
        for req in [r for r in self.requests.values() if r.deadline <= now]:
            self._close(req)
            self.stats["failed"] += 1
            self.outbox.append(Fail(req.client, req.rid, ErrorKind.TIMEOUT,
                                    f"request not scored within {self.request_timeout:g} s"))
        if not self.workers:
            for req in [r for r in self.requests.values()
                        if now >= max(r.received, self.no_workers_since) + self.no_worker_grace]:
                self._close(req)
                self.stats["failed"] += 1
                self.outbox.append(Fail(req.client, req.rid, ErrorKind.NO_WORKER,
                                        "no worker is available to score this request"))
        if self.queue and self.queue[0].request.done:
            self._drop_closed_pieces()

    def next_deadline(self) -> float | None:
        """Earliest time at which tick() has something to do, if any."""
        times = [w.expiry for w in self.workers.values()]
        times += [r.deadline for r in self.requests.values()]
        if not self.workers and self.requests:
            times.append(max(min(r.received for r in self.requests.values()), self.no_workers_since)
                         + self.no_worker_grace)
        return min(times) if times else None

    # -- the core: hand queued work to idle workers -------------------------
    def dispatch(self, now: float) -> None:
        self._drop_closed_pieces()
        if not (self.idle and self.queue):
            return
        queued = sum(p.size for p in self.queue)
        while self.idle and self.queue:
            # Each idle worker gets an equal share of what is queued, within the split bounds. Where that
            # takes several rounds of max_batch_pairs, the rounds are equal too, and the request keeps
            # that piece size: 240 pairs over 3 idle workers at most 64 a job are 6 pieces of 40, not
            # 64+64+64+48, which would make one worker take two big pieces while the others wait.
            rounds = max(1, math.ceil(queued / (len(self.idle) * self.max_batch_pairs)))
            share = max(self.min_split_pairs, math.ceil(queued / (len(self.idle) * rounds)))
            budget = min(self.max_batch_pairs, share)
            if self.queue[0].request.cut:
                budget = self.queue[0].request.cut
            queued -= budget
            identity, _ = self.idle.popitem(last=False)
            pieces: list[Piece] = []
            while budget > 0 and self.queue:
                piece = self.queue[0]
                if piece.request.done:
                    self.queue.popleft()
                    continue
                if piece.size > budget:  # split: the rest stays at the head
                    if rounds > 1 and not pieces:
                        piece.request.cut = piece.request.cut or budget
                    pieces.append(Piece(piece.request, piece.start, piece.start + budget, piece.attempts))
                    piece.start += budget
                    budget = 0
                else:
                    pieces.append(self.queue.popleft())
                    budget -= piece.size
            if not pieces:
                self.idle[identity] = None
                break
            self._next_job += 1
            tasks, owners = _tasks(pieces)
            job = Job(b"%d" % self._next_job, identity, pieces, now, owners)
            self.jobs[job.id] = job
            self.workers[identity].job = job
            for req in owners:
                if req.started is None:
                    req.started = now
            self.outbox.append(SendJob(identity, job.id, tasks))

    # -- internals ------------------------------------------------------------
    def _finish_job(self, identity: bytes, job_id: bytes, now: float) -> Job | None:
        worker = self.workers.get(identity)
        if worker is None:
            return None
        worker.expiry = now + self.heartbeat_expiry
        job = self.jobs.get(job_id)
        if job is None or job.worker != identity:
            return None  # a job from before a purge or a broker restart
        del self.jobs[job_id]
        worker.job = None
        worker.jobs_done += 1
        worker.pairs_done += sum(p.size for p in job.pieces)
        self.idle[identity] = None
        return job

    def _requeue(self, job: Job, count: bool = True) -> None:
        for piece in reversed(job.pieces):
            if piece.request.done:
                continue
            piece.attempts += count
            if piece.attempts > self.max_retries:
                self._close(piece.request)
                self.stats["failed"] += 1
                self.outbox.append(Fail(piece.request.client, piece.request.rid, ErrorKind.WORKERS_LOST,
                                        f"workers died while scoring this request ({piece.attempts} times)"))
            else:
                self.stats["redispatched"] += 1
                self.queue.appendleft(piece)

    def _fail_job(self, job: Job, kind: ErrorKind, message: str) -> None:
        for piece in job.pieces:
            self._fail(piece.request, kind, message)

    def _fail(self, req: Request, kind: ErrorKind, message: str) -> None:
        if not req.done:
            self._close(req)
            self.stats["failed"] += 1
            self.outbox.append(Fail(req.client, req.rid, kind, message))

    def _close(self, req: Request) -> None:
        req.done = True
        self.requests.pop((req.client, req.rid), None)

    def _drop_closed_pieces(self) -> None:
        if any(p.request.done for p in self.queue):
            self.queue = deque(p for p in self.queue if not p.request.done)


def _tasks(pieces: list[Piece]) -> tuple[list[Task], list[Request]]:
    """The job's tasks, and the request of each: pieces of the same request next to each other
    travel as one task, with that request's options and trace."""
    tasks: list[Task] = []
    owners: list[Request] = []
    last: Piece | None = None
    for piece in pieces:
        req = piece.request
        sentences = req.task.sentences[piece.start:piece.stop]
        if last is not None and last.request is req and last.stop == piece.start:
            tasks[-1].sentences.extend(sentences)
        else:
            tasks.append(Task(req.task.query, list(sentences), req.task.options, req.task.trace))
            owners.append(req)
        last = piece
    return tasks, owners
