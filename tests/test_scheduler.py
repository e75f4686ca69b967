"""Broker bookkeeping, driven with explicit times: no sockets, no sleeps."""

import numpy as np
import pytest

from gateway.scheduler import Fail, Reply, Scheduler, SendJob
from shared.protocol import ErrorKind, ScoreOptions, Task


def make(**kw) -> Scheduler:
    args = dict(heartbeat_expiry=3.0, request_timeout=10.0, no_worker_grace=2.0, max_batch_pairs=4,
                max_retries=1, max_queued=10)
    args.update(kw)
    return Scheduler(**args)


def scores_for(job: SendJob) -> np.ndarray:
    """Fake scores that encode the sentence, so merges can be checked: 's7' -> 7."""
    return np.array([float(s[1:]) for task in job.tasks for s in task.sentences], dtype=np.float32)


def sents(n, start=0):
    return [f"s{i}" for i in range(start, start + n)]


def test_work_goes_to_idle_workers_only():
    s = make()
    s.submit(b"c", b"r1", Task("q", sents(2)), now=0)
    assert s.drain() == []  # no worker yet: it waits
    s.worker_ready(b"w1", {}, now=0)
    (job,) = s.drain()
    assert isinstance(job, SendJob) and job.worker == b"w1" and [(t.query, t.sentences) for t in job.tasks] == [("q", ["s0", "s1"])]
    s.submit(b"c", b"r2", Task("q", sents(2)), now=0)
    assert s.drain() == []  # w1 is busy: nothing is pushed onto it
    s.job_done(b"w1", job.job_id, scores_for(job), now=1)
    reply, job2 = s.drain()
    assert isinstance(reply, Reply) and reply.rid == b"r1" and reply.scores.tolist() == [0, 1]
    assert isinstance(job2, SendJob) and job2.worker == b"w1"


def test_big_request_is_split_across_idle_workers_and_merged_in_order():
    s = make(max_batch_pairs=100)
    for w in (b"w1", b"w2", b"w3"):
        s.worker_ready(w, {}, now=0)
    s.submit(b"c", b"big", Task("q", sents(10)), now=0)
    jobs = s.drain()
    assert [j.worker for j in jobs] == [b"w1", b"w2", b"w3"]
    assert [len(j.tasks[0].sentences) for j in jobs] == [4, 3, 3]  # fair shares of 10 over 3
    for job in reversed(jobs):  # answers out of order
        s.job_done(job.worker, job.job_id, scores_for(job), now=1)
    (reply,) = s.drain()
    assert reply.scores.tolist() == list(range(10))


@pytest.mark.parametrize("workers", range(1, 9))
def test_a_request_over_several_rounds_is_cut_in_equal_pieces(workers):
    # W240 over k idle workers at most 64 pairs a job: no worker should do more than its share.
    s = make(max_batch_pairs=64)
    names = [b"w%d" % i for i in range(workers)]
    for w in names:
        s.worker_ready(w, {}, now=0)
    s.submit(b"c", b"big", Task("q", sents(240)), now=0)
    done = {w: 0 for w in names}
    jobs = s.drain()
    while jobs:  # workers answer in turn; each takes the next piece as it comes back
        job = jobs.pop(0)
        assert isinstance(job, SendJob)
        done[job.worker] += sum(len(t.sentences) for t in job.tasks)
        s.job_done(job.worker, job.job_id, scores_for(job), now=1)
        out = s.drain()
        jobs += [a for a in out if isinstance(a, SendJob)]
        replies = [a for a in out if isinstance(a, Reply)]
        if replies:
            assert replies[0].scores.tolist() == list(range(240))
    assert sum(done.values()) == 240
    assert max(done.values()) <= -(-240 // workers) + 1  # the ideal share, up to rounding


def test_small_requests_are_not_split_below_min_split_pairs():
    s = make(max_batch_pairs=100, min_split_pairs=4)
    for w in (b"w1", b"w2", b"w3"):
        s.worker_ready(w, {}, now=0)
    s.submit(b"c", b"small", Task("q", sents(6)), now=0)
    assert [len(j.tasks[0].sentences) for j in s.drain()] == [4, 2]
    s.submit(b"c", b"tiny", Task("q", sents(3)), now=0)
    assert [len(j.tasks[0].sentences) for j in s.drain()] == [3]


def test_small_concurrent_requests_are_merged_into_one_job():
    s = make(max_batch_pairs=8)
    s.submit(b"c1", b"a", Task("qa", sents(3)), now=0)
    s.submit(b"c2", b"b", Task("qb", sents(3, 10)), now=0)
    s.worker_ready(b"w", {}, now=0)
    (job,) = s.drain()
    assert [(t.query, t.sentences) for t in job.tasks] == [("qa", ["s0", "s1", "s2"]), ("qb", ["s10", "s11", "s12"])]
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    replies = {r.rid: r.scores.tolist() for r in s.drain()}
    assert replies == {b"a": [0, 1, 2], b"b": [10, 11, 12]}


def test_silent_worker_is_purged_and_its_work_redispatched():
    s = make()
    s.worker_ready(b"w1", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(3)), now=0)
    (job,) = s.drain()
    s.worker_ready(b"w2", {}, now=1)
    s.worker_seen(b"w2", now=2.5)
    s.tick(now=2.9)
    assert s.drain() == [] and b"w1" in s.workers
    s.tick(now=3.0)  # w1 silent for 3 s: purged
    assert b"w1" not in s.workers
    (job2,) = s.drain()
    assert job2.worker == b"w2" and job2.tasks == job.tasks
    s.job_done(b"w1", job.job_id, scores_for(job), now=3.1)  # a late answer from the dead one is ignored
    assert s.drain() == []
    s.job_done(b"w2", job2.job_id, scores_for(job2), now=3.2)
    (reply,) = s.drain()
    assert reply.scores.tolist() == [0, 1, 2]
    assert s.status()["redispatched"] == 1 and s.status()["purged"] == 1


def test_retries_are_bounded():
    s = make(max_retries=1)
    s.submit(b"c", b"r", Task("q", sents(1)), now=0)
    s.worker_ready(b"w1", {}, now=0)
    s.drain()
    s.worker_gone(b"w1", now=1)  # first loss: re-queued
    assert s.drain() == [] and s.status()["queued"] == 1
    s.worker_ready(b"w2", {}, now=1)
    s.drain()
    s.worker_gone(b"w2", now=2)  # second loss: past max_retries
    (fail,) = s.drain()
    assert isinstance(fail, Fail) and fail.kind is ErrorKind.WORKERS_LOST and "died" in fail.message
    assert s.status()["queued"] == 0 and not s.requests


def test_request_past_its_deadline_times_out_and_its_late_result_is_dropped():
    s = make(request_timeout=5)
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    s.worker_seen(b"w", now=2.5)
    s.worker_seen(b"w", now=4.9)
    s.tick(now=4.99)
    assert s.drain() == []
    s.tick(now=5.0)
    (fail,) = s.drain()
    assert fail.kind is ErrorKind.TIMEOUT
    s.job_done(b"w", job.job_id, scores_for(job), now=6)
    assert s.drain() == [] and list(s.idle) == [b"w"]  # the worker is idle again


def test_no_worker_fails_after_the_grace_period():
    s = make(no_worker_grace=2)
    s.submit(b"c", b"r", Task("q", sents(1)), now=10)
    s.tick(now=11.9)
    assert s.drain() == []
    assert s.next_deadline() == 12
    s.tick(now=12)
    (fail,) = s.drain()
    assert fail.kind is ErrorKind.NO_WORKER and "no worker" in fail.message


def test_waiting_for_a_busy_worker_is_not_a_no_worker_failure():
    s = make(no_worker_grace=2)
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r1", Task("q", sents(1)), now=0)
    s.submit(b"c", b"r2", Task("q", sents(1)), now=0)
    s.drain()
    s.worker_seen(b"w", now=2.5)
    s.tick(now=2.9)
    assert s.drain() == []  # r2 waits in the queue; only its deadline can fail it


def test_grace_restarts_when_the_last_worker_dies():
    s = make(no_worker_grace=2)
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(1)), now=0)
    s.drain()
    s.worker_gone(b"w", now=5)
    s.tick(now=6.9)
    assert s.drain() == []
    s.tick(now=7)
    assert [a.kind for a in s.drain()] == [ErrorKind.NO_WORKER]


def test_queue_limit_fails_as_overloaded():
    s = make(max_queued=2)
    for rid in (b"1", b"2", b"3"):
        s.submit(b"c", rid, Task("q", sents(1)), now=0)
    (fail,) = s.drain()
    assert fail.rid == b"3" and fail.kind is ErrorKind.OVERLOADED


def test_empty_request_is_answered_at_once():
    s = make()
    s.submit(b"c", b"r", Task("q", []), now=0)
    (reply,) = s.drain()
    assert isinstance(reply, Reply) and reply.scores.shape == (0,) and not s.requests


def test_wrong_number_of_scores_fails_the_request():
    s = make()
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(3)), now=0)
    (job,) = s.drain()
    s.job_done(b"w", job.job_id, np.zeros(2, np.float32), now=1)
    (fail,) = s.drain()
    assert fail.kind is ErrorKind.BAD_REPLY and "2 scores for 3" in fail.message


def test_worker_error_fails_the_request():
    s = make()
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(1)), now=0)
    (job,) = s.drain()
    s.job_failed(b"w", job.job_id, ErrorKind.WORKER_FAILED, "RuntimeError: boom", now=1)
    (fail,) = s.drain()
    assert fail.kind is ErrorKind.WORKER_FAILED and "boom" in fail.message


def test_unknown_worker_is_not_seen():
    s = make()
    assert s.worker_seen(b"ghost", now=0) is False


def test_reannounced_worker_loses_its_job_to_the_queue():
    s = make()
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    s.worker_ready(b"w", {}, now=1)  # restarted with the same identity
    (job2,) = s.drain()
    assert job2.job_id != job.job_id and job2.tasks == job.tasks


def test_status_reports_the_pool():
    s = make()
    info = {"host": "h", "pid": 7, "model": "m", "backend": "onnx", "precision": "int8", "max_length": 512,
            "protocol": "RRK2", "pool": "p"}
    s.worker_ready(b"w", info, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    assert s.status()["pool"] == [{"host": "h", "pid": 7, "model": "m", "backend": "onnx", "precision": "int8",
                                   "max_length": 512, "busy": True, "jobs": 0, "pairs": 0}]
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    assert s.status()["pool"][0] == {**s.status()["pool"][0], "busy": False, "jobs": 1, "pairs": 2}
    assert s.status()["workers"] == 1 and s.status()["idle"] == 1


def test_a_worker_leaving_gracefully_does_not_use_up_retries():
    s = make(max_retries=0)
    s.submit(b"c", b"r", Task("q", sents(1)), now=0)
    for i in range(3):  # scale-down: each worker is handed the job as it says DISCONNECT
        s.worker_ready(b"w%d" % i, {}, now=i)
        s.drain()
        s.worker_gone(b"w%d" % i, now=i, graceful=True)
    assert s.drain() == [] and s.status()["queued"] == 1
    s.worker_ready(b"last", {}, now=5)
    (job,) = s.drain()
    s.job_done(b"last", job.job_id, scores_for(job), now=6)
    assert isinstance(s.drain()[0], Reply)


def test_tasks_carry_their_request_options_and_trace_and_replies_carry_timings():
    s = make(max_batch_pairs=8)
    raw = ScoreOptions(raw=True, truncation_side="left")
    s.submit(b"c", b"a", Task("qa", sents(2), raw, "trace-a"), now=0)
    s.submit(b"c", b"b", Task("qb", sents(2, 5)), now=0.5)
    s.worker_ready(b"w", {}, now=1)
    (job,) = s.drain()
    assert [(t.options, t.trace) for t in job.tasks] == [(raw, "trace-a"), (ScoreOptions(), "")]
    s.job_done(b"w", job.job_id, scores_for(job), now=3, compute_ms=1000.0)
    replies = {r.rid: r for r in s.drain()}
    assert replies[b"a"].meta == {"queue_ms": 1000.0, "compute_ms": 2000.0, "inference_ms": 500.0}
    assert replies[b"b"].meta == {"queue_ms": 500.0, "compute_ms": 2000.0, "inference_ms": 500.0}


def test_a_task_that_fails_alone_fails_only_its_request():
    s = make(max_batch_pairs=8)
    s.submit(b"c", b"a", Task("qa", sents(2)), now=0)
    s.submit(b"c", b"b", Task("qb", sents(2, 5)), now=0)
    s.worker_ready(b"w", {}, now=0)
    (job,) = s.drain()
    s.job_done(b"w", job.job_id, scores_for(job), now=1, errors={0: (ErrorKind.TOO_LONG, "too long")})
    out = {a.rid: a for a in s.drain()}
    assert isinstance(out[b"a"], Fail) and out[b"a"].kind is ErrorKind.TOO_LONG
    assert isinstance(out[b"b"], Reply) and out[b"b"].scores.tolist() == [5.0, 6.0]


def test_a_cancelled_request_is_dropped_from_the_queue_and_its_late_result_ignored():
    s = make(max_batch_pairs=2)
    s.submit(b"c", b"gone", Task("q", sents(4)), now=0)
    s.worker_ready(b"w", {}, now=0)
    (job,) = s.drain()
    s.cancel(b"c", b"gone")
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    assert s.drain() == [] and not s.queue and s.status()["cancelled"] == 1
    s.submit(b"c", b"next", Task("q", sents(1)), now=1)
    (next_job,) = s.drain()  # the worker is idle again: the cancelled rest did not take it
    assert next_job.tasks[0].sentences == ["s0"]
