"""The broker's bookkeeping, without sockets or clocks (tested without sleeps).

Events come in as method calls with the current time; what must be sent comes
out as actions in `outbox`, which the broker loop drains and puts on the wire.

- Workers announce READY and are idle; work goes to idle workers only, and only
  to those heard from within `fresh_within` seconds (a frozen worker is not
  handed work while its heartbeats are late, though it is not yet purged).
  Workers that have answered a job come first: one that has not (just joined,
  or one that says READY and never answers) gets work when no other is idle.
- With a score cache, the pairs of a request scored before (by workers of the
  pool's one mode) are answered from it; only the others go to workers, and a
  request the cache answers whole needs no worker at all (gateway/cache.py).
- A request's sentences wait in a FIFO of pieces. An idle worker is handed a
  job of up to `max_batch_pairs` pairs, about its fair share of what is queued
  by weight (characters, and a few a pair: what a worker's time follows; but not
  less than `min_split_pairs` pairs), taken from the head of the FIFO: a big
  request is split across idle workers in pieces of equal weight, small
  concurrent ones are merged into one job. Scores are independent per pair, so
  the merged result equals the unsplit one.
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
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from typing import Sequence, Union

import numpy as np

from shared.protocol import ErrorKind, Task

from .cache import Mode, ScoreCache, mode_of

JOB_SLACK = 4.0     # a job may take this many times the time its worker's rate predicts
RATE_WEIGHT = 0.3   # weight of the newest job in a worker's moving average of seconds per pair
# A pair's weight, for splitting work, is its characters (query and sentence) and these few more: its
# special tokens and the rest of a pair's fixed cost, in characters (about 3 tokens of 4-5 characters).
PAIR_CHARS = 16


@dataclass
class Request:
    client: bytes
    rid: bytes
    task: Task
    received: float
    deadline: float
    scores: np.ndarray = field(init=False)
    todo: Sequence[str] = field(init=False)  # the sentences for the workers: all, or those not cached
    cum: list[int] = field(init=False)  # cum[i]: the weight of todo[:i], so that a piece's costs no loop
    where: np.ndarray | None = None  # each of `todo`'s index in task.sentences (None: todo is all of them)
    remaining: int = field(init=False)  # of `todo`, not scored yet
    cached: int | None = None  # sentences answered from the cache (None: no cache)
    keys: list[bytes] | None = None  # the cache keys of `todo`, for workers of mode `keyed`
    keyed: Mode | None = None
    done: bool = False
    cut: float = 0.0  # piece weight, once a request too big for one round of the idle workers is split
    started: float | None = None  # when its first piece went to a worker
    inference_ms: float = 0.0  # its share of the workers' compute time
    tokens: float | None = None  # its share of the tokens the workers scored, where they say

    def __post_init__(self) -> None:
        self.scores = np.empty(len(self.task.sentences), dtype=np.float32)
        self._leave(self.task.sentences)

    def keep_only(self, where: np.ndarray) -> None:
        """Leave the workers only the sentences at `where` (the others' scores are in already)."""
        sentences = self.task.sentences
        self.where = where
        self._leave([sentences[i] for i in where.tolist()])
        self.cached = len(sentences) - self.remaining

    def _leave(self, todo: Sequence[str]) -> None:
        self.todo = todo
        self.remaining = len(todo)
        # a list, not an array: for these few numbers its items and bisect are faster than numpy's
        self.cum = list(accumulate(map(add, map(len, todo), repeat(len(self.task.query) + PAIR_CHARS)), initial=0))

    def fill(self, start: int, stop: int, scores: np.ndarray) -> None:
        """Scores of todo[start:stop], in their places."""
        if self.where is None:
            self.scores[start:stop] = scores
        else:
            self.scores[self.where[start:stop]] = scores

    def timings(self, now: float) -> dict:
        """What the REPLY's meta says of this request: waiting, then being scored, and by what."""
        started = self.received if self.started is None else self.started
        meta = {"queue_ms": round((started - self.received) * 1000, 3),
                "compute_ms": round((now - started) * 1000, 3),
                "inference_ms": round(self.inference_ms, 3)}
        if self.cached is not None:
            meta["cached"] = self.cached
        if self.tokens is not None:
            meta["tokens"] = round(self.tokens)
        return meta


@dataclass
class Piece:
    """Sentences start..stop of one request's todo."""
    request: Request
    start: int
    stop: int
    attempts: int = 0
    alone: bool = False  # goes in a job with no other request's pieces
    weight: int = field(init=False)

    def __post_init__(self) -> None:
        cum = self.request.cum
        self.weight = cum[self.stop] - cum[self.start]

    @property
    def size(self) -> int:
        return self.stop - self.start

    def count(self, share: float, mean: float, least: int, most: int) -> int:
        """How many of this piece's pairs, from its start, make `share` in weight: up to the pair
        boundary nearest it, running over by up to one pair of the `mean` weight rather than
        stopping short (so equal pairs are cut as before, 10 over 3 in 4 + 3 + 3), all of them where
        less than half such a pair would be left (a job for it would cost a round trip more), and no
        fewer than `least` pairs, no more than `most`."""
        if self.weight <= share and self.size <= most:  # all of it (the usual case: a small request)
            return self.size
        cum = self.request.cum
        target = cum[self.start] + share
        end = bisect_left(cum, target, self.start, self.stop + 1)  # the first boundary at or past it
        if end > self.stop or cum[self.stop] - target < mean / 2:  # all, rather than leave a sliver behind
            n = self.size
        elif end <= self.start:  # no share left
            n = 0
        else:
            n = end - self.start - (cum[end] - target > max(target - cum[end - 1], mean))
        return min(max(n, least), most, self.size)

    def weight_of(self, n: int) -> int:
        """The weight of this piece's first `n` pairs."""
        cum = self.request.cum
        return cum[self.start + n] - cum[self.start]

    def split(self, n: int) -> "Piece":
        """Cut off this piece's first `n` pairs, as a piece of their own; this one keeps the rest."""
        head = Piece(self.request, self.start, self.start + n, self.attempts, self.alone)
        self.start += n
        self.weight -= head.weight
        return head


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
    mode: Mode = ()  # what its scores depend on (gateway/cache.py)


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
    meta: dict = field(default_factory=dict)  # timings, cached and tokens (Request.timings)


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
                 job_floor: float | None = None, job_prefix: bytes = b"", cache: ScoreCache | None = None) -> None:
        """`fresh_within`: seconds since a worker was last heard from within which it may be handed
        work (default: until it expires); `job_floor`: the least time a job is allowed on a worker
        before it is taken back (None: no bound); `job_prefix`: makes job ids unique across brokers;
        `cache`: scores of pairs scored before (None: none)."""
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
        self.cache = cache
        self.workers: dict[bytes, WorkerState] = {}
        self.modes: Counter[Mode] = Counter()  # the connected workers' modes, how many of each
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
                      "dropped": 0, "isolated": 0, "cancelled": 0, "tokens": 0}

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
            "cache_hits": self.cache.hits if self.cache else 0,
            "cache_misses": self.cache.misses if self.cache else 0,
            "cache": self.cache.status() if self.cache else None,
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
        worker = self.workers[identity] = WorkerState(identity, info, now + self.heartbeat_expiry, now,
                                                      mode=mode_of(info))
        self.modes[worker.mode] += 1
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
                 errors: dict[int, tuple[ErrorKind, str]] | None = None, tokens: int | None = None) -> None:
        """A RESULT: the job's scores, the worker's compute time, the tasks that failed alone
        ({task index: (kind, message)}: those requests fail, the others get their scores) and the
        tokens it scored, if it says. A result that does not fit the job is refused: the worker is
        dropped and the job runs elsewhere. Time and tokens are shared out by weight."""
        job = self._held(identity, job_id, now)
        if job is None:
            return
        problem = _misfit(job, scores, errors or {})
        if problem is not None:
            self.drop_worker(identity, now, problem)
            return
        self._finish(job, now, measure=True)
        failed = set()
        for index, (kind, message) in (errors or {}).items():
            failed.add(id(job.owners[index]))
            self._fail(job.owners[index], kind, message)
        if tokens is not None:
            self.stats["tokens"] += tokens
        mode = self.workers[identity].mode
        offset = 0
        weight = job.chars + PAIR_CHARS * job.pairs
        for piece in job.pieces:
            req = piece.request
            part = scores[offset:offset + piece.size]
            offset += piece.size
            if self.cache is not None and id(req) not in failed:  # a failed task's scores mean nothing
                self._remember(req, piece, part, mode)
            if req.done:
                continue
            req.fill(piece.start, piece.stop, part)
            share = piece.weight / weight
            req.inference_ms += compute_ms * share
            if tokens is not None:
                req.tokens = (req.tokens or 0.0) + tokens * share
            req.remaining -= piece.size
            self.pending_pairs -= piece.size
            if req.remaining == 0:
                self._close(req)
                self.outbox.append(Reply(req.client, req.rid, req.scores, req.timings(now)))
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
        req = Request(client, rid, task, now, now + self.request_timeout)
        if self.cache is not None:
            self._look_up(req)
        pairs = req.remaining  # for the workers
        refusal = self._refusal(pairs) if pairs else None
        if refusal is not None:
            self.stats["failed"] += 1
            self.stats["overloaded"] += 1
            self.outbox.append(Fail(client, rid, ErrorKind.OVERLOADED, *refusal))
            return
        self.stats["requests"] += 1
        self.stats["pairs"] += len(task.sentences)
        if not pairs:  # empty, or answered whole from the cache
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
        weight = sum(p.weight for p in self.queue)
        while self.queue:
            identity = self._take_idle(now)
            if identity is None:
                break
            # Each idle worker gets an equal share by weight of what is queued, but no less than the
            # weight of min_split_pairs pairs. Where that takes several rounds of max_batch_pairs, the
            # rounds are equal too, and the request keeps that share: 240 equal pairs over 3 idle
            # workers at most 64 a job are 6 pieces of 40, not 64+64+64+48, which would make one worker
            # take two big pieces while the others wait. Rounds are counted in pairs, and also in the
            # weight of the head's first max_batch_pairs pairs: where those are light, a share would
            # take more pairs than a job may have, and the worker that takes the rest would be late.
            idle = len(self.idle) + len(self.untried) + 1
            rounds = max(1, math.ceil(queued / (idle * self.max_batch_pairs)))
            head = self.queue[0]
            if head.size > self.max_batch_pairs and not head.request.cut:
                rounds = max(rounds, math.ceil(weight / (idle * head.weight_of(self.max_batch_pairs))))
            mean = weight / queued
            share = max(self.min_split_pairs * mean, weight / (idle * rounds))
            pieces = self._take(share, mean, keep_cut=rounds > 1)
            if not pieces:
                self._make_idle(self.workers[identity], first=True)
                break
            queued -= sum(p.size for p in pieces)
            weight -= sum(p.weight for p in pieces)
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
    def _take(self, share: float, mean: float, keep_cut: bool) -> list[Piece]:
        """One job's pieces from the head of the queue: `share` in weight (or the head request's cut;
        Piece.count says where a piece ends), at most max_batch_pairs pairs; `keep_cut`: a request
        split here keeps `share` as the weight of its pieces."""
        if self.queue[0].request.cut:
            share = self.queue[0].request.cut
        pieces: list[Piece] = []
        pairs = 0
        while self.queue and pairs < self.max_batch_pairs:
            piece = self.queue[0]
            if piece.request.done:
                self.queue.popleft()
                continue
            if pieces and (share <= 0 or not _together(pieces[-1], piece)):
                break
            n = piece.count(share, mean, 0 if pieces else 1, self.max_batch_pairs - pairs)
            if n == 0:
                break
            if n < piece.size:  # split: the rest stays at the head
                if keep_cut and not pieces:
                    piece.request.cut = piece.request.cut or share
                pieces.append(piece.split(n))
                break
            pieces.append(self.queue.popleft())
            pairs += n
            share -= piece.weight
        return pieces

    def _look_up(self, req: Request) -> None:
        """Answer what the cache can of `req`, where the pool's workers agree on their mode (in a
        rolling update from one mode to another, nothing is looked up until it is over, so that no
        answer mixes scores of two modes that the pool would not mix anyway)."""
        cache, task = self.cache, req.task
        req.cached = 0
        mode = next(iter(self.modes)) if len(self.modes) == 1 else None
        if mode is None or not task.sentences:
            cache.missed(len(task.sentences))
            return
        keys = cache.keys(mode, task.options, task.query, task.sentences)
        found = cache.get(keys)
        hit = ~np.isnan(found)
        if hit.any():
            req.scores[hit] = found[hit]
            where = np.flatnonzero(~hit)
            req.keep_only(where)
            keys = [keys[i] for i in where.tolist()]
        req.keys, req.keyed = keys, mode

    def _remember(self, req: Request, piece: Piece, scores: np.ndarray, mode: Mode) -> None:
        """Cache a piece's scores under the mode of the worker that computed them."""
        if req.keyed == mode:
            keys = req.keys[piece.start:piece.stop]
        else:  # not looked up, or looked up for another mode than this worker's
            keys = self.cache.keys(mode, req.task.options, req.task.query, req.todo[piece.start:piece.stop])
        self.cache.put(keys, scores)

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
        self.modes[worker.mode] -= 1
        if not self.modes[worker.mode]:
            del self.modes[worker.mode]
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
    characters of it all (a query counted once a pair): pieces of the same request next to each
    other travel as one task, with that request's options and trace."""
    tasks: list[Task] = []
    owners: list[Request] = []
    bounds = [0]
    chars = 0
    last: Piece | None = None
    for piece in pieces:
        req = piece.request
        sentences = req.todo[piece.start:piece.stop]
        chars += piece.weight - PAIR_CHARS * piece.size
        if last is not None and last.request is req and last.stop == piece.start:
            tasks[-1].sentences.extend(sentences)
            bounds[-1] += piece.size
        else:
            tasks.append(Task(req.task.query, list(sentences), req.task.options, req.task.trace))
            owners.append(req)
            bounds.append(bounds[-1] + piece.size)
        last = piece
    return tasks, owners, bounds, chars
