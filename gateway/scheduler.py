"""The broker's bookkeeping, without sockets or clocks (tested without sleeps).

Events come in as method calls with the current time; what must be sent comes
out as actions in `outbox`, which the broker loop drains and puts on the wire.

- Workers announce READY and are idle; work goes to idle workers only, and only
  to those heard from within `fresh_within` seconds (a frozen worker is not
  handed work while its heartbeats are late, though it is not yet purged).
  Workers that have answered a job come first: one that has not (just joined,
  or one that says READY and never answers) gets work when no other is idle.
- A request's sentences wait in a FIFO of pieces. An idle worker is handed a
  job of up to `max_batch_pairs` pairs, no more than its fair share of what is
  queued (but not less than `min_split_pairs`), taken from the head of the FIFO: a big request is split across idle
  workers in equal pieces, small concurrent ones are merged into one job. Scores are
  independent per pair, so the merged result equals the unsplit one.
- Work comes back to the head of the FIFO when its worker is lost: purged (silent
  past its expiry), unreachable, dropped for an answer out of protocol (a job it
  does not hold, the wrong number of scores, scores that are not finite) or for
  holding a job far longer than the pool's measured rate allows. Each piece is
  lost at most `max_retries` times, and after its first loss travels alone (in a
  job with no other request), so that a request that breaks workers takes no other
  request down with it. A job that never reached its worker is not counted. A job's
  time on a worker is judged by its characters, as long texts take longer a pair.
- A job of several requests that the worker's scorer fails is run again as one job
  per request, so that only the request that causes the failure fails.
- Admission, in pairs: a request is refused as OVERLOADED at once, with the seconds
  after which to retry, when the requests or pairs held would pass their bounds, or
  when the pool at its measured rate would not reach it before its timeout.
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

JOB_SLACK = 4.0     # a job may take this many times the time its worker's rate predicts
RATE_WEIGHT = 0.3   # weight of the newest job in a worker's moving average of seconds per pair


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
    alone: bool = False  # goes in a job with no other request's pieces

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
    bounds: list[int] = field(default_factory=list)  # where each task's scores start, and the end
    chars: int = 0  # of its texts, a query counted once a pair: what its time depends on
    deadline: float = math.inf  # past it, the job is taken back from its worker

    @property
    def pairs(self) -> int:
        return self.bounds[-1] if self.bounds else sum(p.size for p in self.pieces)


@dataclass
class WorkerState:
    identity: bytes
    info: dict
    expiry: float
    seen: float  # when it was last heard from
    job: Job | None = None
    jobs_done: int = 0
    pairs_done: int = 0
    seconds_per_pair: float | None = None  # moving averages over its jobs, overhead included
    seconds_per_char: float | None = None


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
    retry_after: float | None = None  # seconds, where the cause passes by itself


@dataclass(frozen=True)
class Disconnect:
    worker: bytes
    reason: str = ""  # why the broker drops it, for the log


Action = Union[SendJob, Reply, Fail, Disconnect]


# What /ready and /info show of each worker, from its READY info.
POOL_FIELDS = ("host", "pid", "model", "backend", "precision", "max_length")

LOST = "workers died while scoring this request"


class Scheduler:
    def __init__(self, *, heartbeat_expiry: float, request_timeout: float, no_worker_grace: float,
                 max_batch_pairs: int, max_retries: int, max_queued: int, min_split_pairs: int = 1,
                 max_queued_pairs: int | None = None, fresh_within: float | None = None,
                 job_floor: float | None = None, job_prefix: bytes = b"") -> None:
        """`fresh_within`: seconds since a worker was last heard from within which it may be handed
        work (default: until it expires); `job_floor`: the least time a job is allowed on a worker
        before it is taken back (None: no bound); `job_prefix`: makes job ids unique across brokers."""
        self.heartbeat_expiry = heartbeat_expiry
        self.request_timeout = request_timeout
        self.no_worker_grace = no_worker_grace
        self.max_batch_pairs = max_batch_pairs
        self.min_split_pairs = min(min_split_pairs, max_batch_pairs)
        self.max_retries = max_retries
        self.max_queued = max_queued
        self.max_queued_pairs = max_queued_pairs if max_queued_pairs is not None else math.inf
        self.fresh_within = fresh_within if fresh_within is not None else heartbeat_expiry
        self.job_floor = job_floor
        self.job_prefix = job_prefix
        self.workers: dict[bytes, WorkerState] = {}
        self.idle: OrderedDict[bytes, None] = OrderedDict()  # idle, have answered a job; longest idle first
        self.untried: OrderedDict[bytes, None] = OrderedDict()  # idle, have not answered one yet
        self.stale: set[bytes] = set()  # idle, but not heard from within fresh_within
        self.queue: deque[Piece] = deque()
        self.requests: dict[tuple[bytes, bytes], Request] = {}
        self.jobs: dict[bytes, Job] = {}
        self.pending_pairs = 0  # pairs of the requests held, not yet scored
        self.capacity = 0.0  # pairs per second of the workers with a measured rate, together
        self.measured = 0  # how many workers have a measured rate
        self.char_time = 0.0  # their seconds per character, summed (a mean for workers not measured yet)
        self.no_workers_since = 0.0
        self.outbox: list[Action] = []
        self._next_job = 0
        self.stats = {"requests": 0, "pairs": 0, "failed": 0, "overloaded": 0, "redispatched": 0, "purged": 0,
                      "dropped": 0, "isolated": 0, "cancelled": 0}

    # -- introspection --------------------------------------------------
    def status(self) -> dict:
        return {
            "workers": len(self.workers),
            "idle": len(self.idle) + len(self.untried),
            "queued": sum(p.size for p in self.queue if not p.request.done),
            "running": len(self.requests),
            "pending_pairs": self.pending_pairs,
            "pairs_per_s": round(self.capacity, 3),
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
        self.workers[identity] = WorkerState(identity, info, now + self.heartbeat_expiry, now)
        self.untried[identity] = None
        self.dispatch(now)

    def worker_seen(self, identity: bytes, now: float) -> bool:
        """Any message from a worker proves it alive. False if it is unknown."""
        worker = self.workers.get(identity)
        if worker is None:
            return False
        worker.expiry = now + self.heartbeat_expiry
        worker.seen = now
        if identity in self.stale:  # late, not dead: it may take work again
            self.stale.discard(identity)
            self._make_idle(worker)
            self.dispatch(now)
        return True

    def worker_gone(self, identity: bytes, now: float, graceful: bool = False) -> None:
        """A worker died (purged, unroutable) or left (`graceful`: it said DISCONNECT when idle, or
        a job sent to it never left the broker, so that job never started and does not count
        against the retries)."""
        self._lose(identity, now, graceful)
        self.dispatch(now)

    def purge(self, identities: list[bytes], now: float) -> None:
        """Workers taken for dead (silent past their expiry, or their connections found closed in a
        round of heartbeats): all are removed before their work is handed out again, so that none
        of it goes to another of them on the way."""
        for identity in identities:
            if identity in self.workers:
                self.stats["purged"] += 1
                self._lose(identity, now)
        self.dispatch(now)

    def drop_worker(self, identity: bytes, now: float, reason: str, kind: ErrorKind = ErrorKind.BAD_REPLY) -> None:
        """Forget a worker that answered out of protocol (or not in time) and tell it to start over;
        its job goes back to the queue, counted as a loss (`kind` fails a request out of retries)."""
        worker = self._remove(identity, now)
        if worker is None:
            return
        self.stats["dropped"] += 1
        self.outbox.append(Disconnect(identity, reason))
        if worker.job is not None:
            cause = ("workers did not answer in time" if kind is ErrorKind.WORKERS_LOST
                     else f"workers answered out of protocol, the last time: {reason}")
            self._requeue(self.jobs.pop(worker.job.id), count=True, kind=kind, cause=cause)
        self.dispatch(now)

    def job_done(self, identity: bytes, job_id: bytes, scores: np.ndarray, now: float, compute_ms: float = 0.0,
                 errors: dict[int, tuple[ErrorKind, str]] | None = None) -> None:
        """A RESULT: the job's scores, the worker's compute time, and the tasks that failed alone
        ({task index: (kind, message)}: those requests fail, the others get their scores). A result
        that does not fit the job is refused: the worker is dropped and the job runs elsewhere."""
        job = self._held(identity, job_id, now)
        if job is None:
            return
        problem = _misfit(job, scores, errors or {})
        if problem is not None:
            self.drop_worker(identity, now, problem)
            return
        self._finish(job, now, measure=True)
        for index, (kind, message) in (errors or {}).items():
            self._fail(job.owners[index], kind, message)
        offset = 0
        expected = job.pairs
        for piece in job.pieces:
            req = piece.request
            if not req.done:
                req.scores[piece.start:piece.stop] = scores[offset:offset + piece.size]
                req.inference_ms += compute_ms * piece.size / expected
                req.remaining -= piece.size
                self.pending_pairs -= piece.size
                if req.remaining == 0:
                    self._close(req)
                    self.outbox.append(Reply(req.client, req.rid, req.scores, req.timings(now)))
            offset += piece.size
        self.dispatch(now)

    def job_failed(self, identity: bytes, job_id: bytes, kind: ErrorKind, message: str, now: float) -> None:
        """An ERROR: the worker could not score the job. If it held several requests, each runs
        again in a job of its own; a job of one request fails that request."""
        job = self._held(identity, job_id, now)
        if job is None:
            return
        self._finish(job, now, measure=False)
        first = job.owners[0]
        if any(owner is not first for owner in job.owners):
            self.stats["isolated"] += 1
            self._requeue(job, count=False, isolate=True)
        else:
            self._fail(first, kind, f"worker failed to score: {message}")
        self.dispatch(now)

    # -- requests ---------------------------------------------------------
    def submit(self, client: bytes, rid: bytes, task: Task, now: float) -> None:
        if (client, rid) in self.requests:
            return  # sent again by a client that cannot tell whether we had it: we do
        pairs = len(task.sentences)
        refusal = self._refusal(pairs)
        if refusal is not None:
            self.stats["failed"] += 1
            self.stats["overloaded"] += 1
            self.outbox.append(Fail(client, rid, ErrorKind.OVERLOADED, *refusal))
            return
        req = Request(client, rid, task, now, now + self.request_timeout)
        self.stats["requests"] += 1
        self.stats["pairs"] += pairs
        if not pairs:
            self.outbox.append(Reply(client, rid, req.scores, req.timings(now)))
            return
        self.requests[(client, rid)] = req
        self.pending_pairs += pairs
        self.queue.append(Piece(req, 0, pairs))
        self.dispatch(now)

    def cancel(self, client: bytes, rid: bytes) -> None:
        """The caller has gone: its queued pieces are dropped, results still to come are discarded."""
        req = self.requests.get((client, rid))
        if req is not None:
            self.stats["cancelled"] += 1
            self._close(req)

    def tick(self, now: float) -> None:
        """Purge silent workers, take jobs back from workers that hold them too long, expire
        requests; call at least once a heartbeat."""
        expired = [w.identity for w in self.workers.values() if w.expiry <= now]
        if expired:
            self.purge(expired, now)
        for job in [j for j in self.jobs.values() if j.deadline <= now]:
            if job.id not in self.jobs:
                continue
            if len(self.workers) > 1:  # another worker can take it
                self.drop_worker(job.worker, now, f"no answer to a job of {job.pairs} pairs in "
                                                  f"{now - job.started:.1f} s", kind=ErrorKind.WORKERS_LOST)
            else:  # the only worker: let it finish, the request's deadline still holds
                job.deadline = now + self._allowance(job, self.workers[job.worker])
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
        times += [j.deadline for j in self.jobs.values()]
        if not self.workers and self.requests:
            times.append(max(min(r.received for r in self.requests.values()), self.no_workers_since)
                         + self.no_worker_grace)
        return min(times) if times else None

    # -- the core: hand queued work to idle workers -------------------------
    def dispatch(self, now: float) -> None:
        self._drop_closed_pieces()
        if not ((self.idle or self.untried) and self.queue):
            return
        queued = sum(p.size for p in self.queue)
        while self.queue:
            identity = self._take_idle(now)
            if identity is None:
                break
            # Each idle worker gets an equal share of what is queued, within the split bounds. Where that
            # takes several rounds of max_batch_pairs, the rounds are equal too, and the request keeps
            # that piece size: 240 pairs over 3 idle workers at most 64 a job are 6 pieces of 40, not
            # 64+64+64+48, which would make one worker take two big pieces while the others wait.
            idle = len(self.idle) + len(self.untried) + 1
            rounds = max(1, math.ceil(queued / (idle * self.max_batch_pairs)))
            share = max(self.min_split_pairs, math.ceil(queued / (idle * rounds)))
            budget = min(self.max_batch_pairs, share)
            if self.queue[0].request.cut:
                budget = self.queue[0].request.cut
            queued -= budget
            pieces: list[Piece] = []
            while budget > 0 and self.queue:
                piece = self.queue[0]
                if piece.request.done:
                    self.queue.popleft()
                    continue
                if pieces and not _together(pieces[-1], piece):
                    break
                if piece.size > budget:  # split: the rest stays at the head
                    if rounds > 1 and not pieces:
                        piece.request.cut = piece.request.cut or budget
                    pieces.append(Piece(piece.request, piece.start, piece.start + budget, piece.attempts,
                                        piece.alone))
                    piece.start += budget
                    budget = 0
                else:
                    pieces.append(self.queue.popleft())
                    budget -= piece.size
            if not pieces:
                self._make_idle(self.workers[identity], first=True)
                break
            self._next_job += 1
            tasks, owners, bounds, chars = _tasks(pieces)
            worker = self.workers[identity]
            job = Job(self.job_prefix + b"%d" % self._next_job, identity, pieces, now, owners, bounds, chars)
            if self.job_floor is not None:
                job.deadline = now + self._allowance(job, worker)
            self.jobs[job.id] = job
            worker.job = job
            for req in owners:
                if req.started is None:
                    req.started = now
            self.outbox.append(SendJob(identity, job.id, tasks))

    # -- internals ------------------------------------------------------------
    def _take_idle(self, now: float) -> bytes | None:
        """The longest-idle worker heard from lately, one that has answered a job if any is idle;
        those late with their heartbeats are set aside (stale) until they are heard from again."""
        for idle in (self.idle, self.untried):
            while idle:
                identity, _ = idle.popitem(last=False)
                if self.workers[identity].seen + self.fresh_within >= now:
                    return identity
                self.stale.add(identity)
        return None

    def _make_idle(self, worker: WorkerState, first: bool = False) -> None:
        idle = self.idle if worker.jobs_done else self.untried
        idle[worker.identity] = None
        if first:
            idle.move_to_end(worker.identity, last=False)

    def _refusal(self, pairs: int) -> tuple[str, float | None] | None:
        """Why a request of `pairs` pairs is not taken now, and when to try again; None to take it."""
        held = self.pending_pairs
        drained = held / self.capacity if self.capacity else None  # seconds to score what is held
        if len(self.requests) >= self.max_queued:
            return f"too many requests in flight (limit {self.max_queued}); retry later", drained
        if held and held + pairs > self.max_queued_pairs:
            return (f"{held} pairs are waiting or being scored, and {pairs} more would pass the limit of "
                    f"{self.max_queued_pairs}; retry later", drained)
        if self.capacity and held:
            # The FIFO's wait, and one job more: while this request waits, requests come behind it,
            # and the job that takes its last pairs may be filled up with theirs, on one worker.
            wait = (held + pairs + self.max_batch_pairs * self.measured) / self.capacity
            if wait > self.request_timeout:
                return (f"the workers, at {self.capacity:.1f} pairs/s, would take {wait:.1f} s to score this "
                        f"request and those before it, more than its timeout of {self.request_timeout:g} s; "
                        "retry later", wait - self.request_timeout)
        return None

    def _allowance(self, job: Job, worker: WorkerState) -> float:
        """How long `job` may stay on `worker`: JOB_SLACK times what the worker's own measured time
        per character (or else the pool's mean) predicts, and never less than job_floor. (Characters,
        not pairs: a pair of long texts takes many times one of short texts; past the model's window
        the estimate runs high, which only makes the allowance more generous.)"""
        per_char = worker.seconds_per_char
        if per_char is None and self.measured:
            per_char = self.char_time / self.measured
        return max(self.job_floor or 0.0, JOB_SLACK * job.chars * (per_char or 0.0))

    def _held(self, identity: bytes, job_id: bytes, now: float) -> Job | None:
        """The job, if the worker holds it; a known worker that answers a job it does not hold is
        dropped (an unknown one is the broker's to tell to start over)."""
        worker = self.workers.get(identity)
        if worker is None:
            return None
        worker.expiry = now + self.heartbeat_expiry
        worker.seen = now
        if worker.job is None or worker.job.id != job_id:
            self.drop_worker(identity, now, f"answered job {job_id[:40]!r}, which it does not hold")
            return None
        return worker.job

    def _finish(self, job: Job, now: float, measure: bool) -> None:
        """The worker that held `job` is idle again; its rate learns from the job's time."""
        worker = self.workers[job.worker]
        del self.jobs[job.id]
        worker.job = None
        worker.jobs_done += 1
        worker.pairs_done += job.pairs
        self._make_idle(worker)
        if measure and job.pairs:
            took = max(now - job.started, 1e-6)
            old, old_char = worker.seconds_per_pair, worker.seconds_per_char
            worker.seconds_per_pair = new = _average(old, took / job.pairs)
            worker.seconds_per_char = new_char = _average(old_char, took / max(job.chars, 1))
            self.capacity += 1 / new - (1 / old if old is not None else 0.0)
            self.char_time += new_char - (old_char or 0.0)
            self.measured += old is None

    def _lose(self, identity: bytes, now: float, graceful: bool = False) -> None:
        worker = self._remove(identity, now)
        if worker is not None and worker.job is not None:
            self._requeue(self.jobs.pop(worker.job.id), count=not graceful)

    def _remove(self, identity: bytes, now: float) -> WorkerState | None:
        worker = self.workers.pop(identity, None)
        if worker is None:
            return None
        self.idle.pop(identity, None)
        self.untried.pop(identity, None)
        self.stale.discard(identity)
        if worker.seconds_per_pair is not None:
            self.measured -= 1
            self.capacity = max(0.0, self.capacity - 1 / worker.seconds_per_pair) if self.measured else 0.0
            self.char_time = max(0.0, self.char_time - worker.seconds_per_char) if self.measured else 0.0
        if not self.workers:
            self.no_workers_since = now
        return worker

    def _requeue(self, job: Job, count: bool = True, isolate: bool | None = None,
                 kind: ErrorKind = ErrorKind.WORKERS_LOST, cause: str = LOST) -> None:
        """Put a job's pieces back at the head of the queue; `count`: as a loss, against the retries.
        Lost work travels alone from then on (`isolate` defaults to `count`)."""
        isolate = count if isolate is None else isolate
        for piece in reversed(job.pieces):
            if piece.request.done:
                continue
            piece.attempts += count
            piece.alone = piece.alone or isolate
            if piece.attempts > self.max_retries:
                self._fail(piece.request, kind, f"{cause} ({piece.attempts} times)")
            else:
                self.stats["redispatched"] += 1
                self.queue.appendleft(piece)

    def _fail(self, req: Request, kind: ErrorKind, message: str) -> None:
        if not req.done:
            self._close(req)
            self.stats["failed"] += 1
            self.outbox.append(Fail(req.client, req.rid, kind, message))

    def _close(self, req: Request) -> None:
        if req.done:
            return
        req.done = True
        self.pending_pairs -= req.remaining
        self.requests.pop((req.client, req.rid), None)

    def _drop_closed_pieces(self) -> None:
        if any(p.request.done for p in self.queue):
            self.queue = deque(p for p in self.queue if not p.request.done)


def _together(last: Piece, piece: Piece) -> bool:
    """Whether `piece` may join a job that ends with `last`: a piece that travels alone shares a
    job with pieces of its own request only."""
    return last.request is piece.request or not (last.alone or piece.alone)


def _misfit(job: Job, scores: np.ndarray, errors: dict[int, tuple[ErrorKind, str]]) -> str | None:
    """What is wrong with a job's scores, if anything: their number, or a score that is not finite
    outside the tasks the worker says failed (whose scores are NaN)."""
    if scores.shape[0] != job.pairs:
        return f"returned {scores.shape[0]} scores for {job.pairs} pairs"
    finite = np.isfinite(scores)
    if not finite.all():
        for index in errors:
            finite[job.bounds[index]:job.bounds[index + 1]] = True
        if not finite.all():
            return f"returned {int((~finite).sum())} scores that are not finite numbers"
    return None


def _average(old: float | None, sample: float) -> float:
    return sample if old is None else old + RATE_WEIGHT * (sample - old)


def _tasks(pieces: list[Piece]) -> tuple[list[Task], list[Request], list[int], int]:
    """The job's tasks, the request of each, where each task's scores start (and the end), and the
    characters of it all: pieces of the same request next to each other travel as one task, with
    that request's options and trace."""
    tasks: list[Task] = []
    owners: list[Request] = []
    bounds = [0]
    chars = 0
    last: Piece | None = None
    for piece in pieces:
        req = piece.request
        sentences = req.task.sentences[piece.start:piece.stop]
        chars += sum(map(len, sentences)) + len(req.task.query) * piece.size
        if last is not None and last.request is req and last.stop == piece.start:
            tasks[-1].sentences.extend(sentences)
            bounds[-1] += piece.size
        else:
            tasks.append(Task(req.task.query, list(sentences), req.task.options, req.task.trace))
            owners.append(req)
            bounds.append(bounds[-1] + piece.size)
        last = piece
    return tasks, owners, bounds, chars
