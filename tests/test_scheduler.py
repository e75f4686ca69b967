"""Broker bookkeeping, driven with explicit times: no sockets, no sleeps."""

import numpy as np
import pytest

from gateway.cache import ScoreCache
from gateway.scheduler import PAIR_CHARS, Disconnect, Fail, Reply, Scheduler, SendJob
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
    # W240 of equal pairs over k idle workers at most 64 pairs a job: no worker should do more than its share.
    s = make(max_batch_pairs=64)
    names = [b"w%d" % i for i in range(workers)]
    for w in names:
        s.worker_ready(w, {}, now=0)
    s.submit(b"c", b"big", Task("q", [f"s{i:03d}" for i in range(240)]), now=0)
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


@pytest.mark.parametrize("failed_scores", ["any", "nan"])  # the worker leaves a failed task's scores NaN
def test_a_task_that_fails_alone_fails_only_its_request(failed_scores):
    s = make(max_batch_pairs=8)
    s.submit(b"c", b"a", Task("qa", sents(2)), now=0)
    s.submit(b"c", b"b", Task("qb", sents(2, 5)), now=0)
    s.worker_ready(b"w", {}, now=0)
    (job,) = s.drain()
    scores = scores_for(job)
    if failed_scores == "nan":
        scores[:2] = np.nan  # not a bad reply: only the failed task's
    s.job_done(b"w", job.job_id, scores, now=1, errors={0: (ErrorKind.TOO_LONG, "too long")})
    out = {a.rid: a for a in s.drain()}
    assert isinstance(out[b"a"], Fail) and out[b"a"].kind is ErrorKind.TOO_LONG
    assert isinstance(out[b"b"], Reply) and out[b"b"].scores.tolist() == [5.0, 6.0]
    assert b"w" in s.workers and not s.stats["dropped"]


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


# -- answers that do not fit: refused, the worker dropped, the work done elsewhere ------------------

def two_workers_one_job(**kw):
    s = make(**kw)
    s.worker_ready(b"w1", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(3)), now=0)
    (job,) = s.drain()
    s.worker_ready(b"w2", {}, now=0.5)
    assert s.drain() == []
    return s, job


@pytest.mark.parametrize("scores, why", [
    (np.zeros(2, np.float32), "2 scores for 3"),
    (np.zeros(4, np.float32), "4 scores for 3"),
    (np.array([0.5, np.nan, 0.5], np.float32), "1 scores that are not finite"),
    (np.array([np.inf, -np.inf, 0.5], np.float32), "2 scores that are not finite"),
])
def test_a_result_that_does_not_fit_is_refused_and_the_work_goes_elsewhere(scores, why):
    s, job = two_workers_one_job()
    s.job_done(b"w1", job.job_id, scores, now=1)
    dropped, again = s.drain()
    assert isinstance(dropped, Disconnect) and dropped.worker == b"w1" and why in dropped.reason
    assert isinstance(again, SendJob) and again.worker == b"w2" and again.tasks == job.tasks
    assert b"w1" not in s.workers and s.stats["dropped"] == 1
    s.job_done(b"w2", again.job_id, scores_for(again), now=2)
    (reply,) = s.drain()
    assert isinstance(reply, Reply) and reply.scores.tolist() == [0, 1, 2]


def test_a_result_for_a_job_the_worker_does_not_hold_drops_it_and_nothing_else():
    s, job = two_workers_one_job()
    s.job_done(b"w2", job.job_id, np.full(3, 0.9, np.float32), now=1)  # w2 answers w1's job
    (dropped,) = s.drain()
    assert dropped == Disconnect(b"w2", dropped.reason) and "does not hold" in dropped.reason
    s.job_done(b"w1", job.job_id, scores_for(job), now=2)
    (reply,) = s.drain()
    assert reply.scores.tolist() == [0, 1, 2]  # the owner's answer, not the intruder's
    s.job_failed(b"w1", b"no-such-job", ErrorKind.WORKER_FAILED, "?", now=3)
    assert [type(a) for a in s.drain()] == [Disconnect] and not s.workers


def test_bad_replies_past_the_retries_fail_the_request_as_bad_reply():
    s = make(max_retries=1)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    for i in range(2):
        s.worker_ready(b"w%d" % i, {}, now=i)
        (job,) = [a for a in s.drain() if isinstance(a, SendJob)]
        s.job_done(job.worker, job.job_id, np.full(2, np.nan, np.float32), now=i + 0.5)
    dropped, fail = s.drain()
    assert isinstance(dropped, Disconnect)
    assert isinstance(fail, Fail) and fail.kind is ErrorKind.BAD_REPLY and "not finite" in fail.message


# -- a job that fails is run again apart ----------------------------------------------------

def test_a_failed_job_of_several_requests_runs_again_one_job_per_request():
    s = make(max_batch_pairs=8)
    for rid, start in ((b"a", 0), (b"bad", 10), (b"c", 20)):
        s.submit(b"cl", rid, Task("q", sents(2, start)), now=0)
    s.worker_ready(b"w", {}, now=0)
    (merged,) = s.drain()
    assert len(merged.tasks) == 3
    s.job_failed(b"w", merged.job_id, ErrorKind.WORKER_FAILED, "ValueError: boom", now=1)
    answers, jobs = {}, 0
    out = s.drain()
    while out:
        (job,) = [a for a in out if isinstance(a, SendJob)] or [None]
        answers.update({a.rid: a for a in out if not isinstance(a, SendJob)})
        if job is None:
            break
        jobs += 1
        assert len(job.tasks) == 1  # one request a job now
        if job.tasks[0].sentences[0] == "s10":
            s.job_failed(b"w", job.job_id, ErrorKind.WORKER_FAILED, "ValueError: boom", now=2)
        else:
            s.job_done(b"w", job.job_id, scores_for(job), now=2)
        out = s.drain()
    assert jobs == 3 and set(answers) == {b"a", b"bad", b"c"}
    assert answers[b"bad"].kind is ErrorKind.WORKER_FAILED and "boom" in answers[b"bad"].message
    assert answers[b"a"].scores.tolist() == [0, 1] and answers[b"c"].scores.tolist() == [20, 21]
    assert s.stats["isolated"] == 1 and s.stats["redispatched"] == 3


def test_lost_work_travels_alone_afterwards():
    s = make(max_batch_pairs=8, max_retries=3)
    s.worker_ready(b"w1", {}, now=0)
    s.submit(b"c", b"a", Task("q", sents(2)), now=0)
    s.drain()
    s.worker_gone(b"w1", now=1)  # a's piece is lost once
    s.submit(b"c", b"b", Task("q", sents(2, 5)), now=1)
    s.worker_ready(b"w2", {}, now=1)
    (job,) = s.drain()
    assert [t.sentences for t in job.tasks] == [["s0", "s1"]]  # not merged with b
    s.job_done(b"w2", job.job_id, scores_for(job), now=2)
    reply, job2 = s.drain()
    assert reply.rid == b"a" and job2.tasks[0].sentences == ["s5", "s6"]


# -- only live workers get work; jobs held too long are taken back ----------------------------

def test_work_goes_only_to_workers_heard_from_lately():
    s = make(fresh_within=1.0)
    s.worker_ready(b"frozen", {}, now=0)
    s.worker_ready(b"live", {}, now=0)
    s.worker_seen(b"live", now=1.5)
    s.submit(b"c", b"r", Task("q", sents(1)), now=1.8)
    (job,) = s.drain()
    assert job.worker == b"live"  # though "frozen" has been idle longer
    s.submit(b"c", b"r2", Task("q", sents(1)), now=1.9)
    assert s.drain() == []  # waits for a live worker rather than go to the silent one
    s.worker_seen(b"frozen", now=2.0)  # it was late, not dead
    (job2,) = s.drain()
    assert job2.worker == b"frozen"


def test_a_worker_that_holds_a_job_past_its_allowance_is_dropped_and_the_job_redone():
    s = make(job_floor=5.0, heartbeat_expiry=100)
    s.worker_ready(b"mute", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    s.worker_ready(b"good", {}, now=0)
    assert s.next_deadline() == 5.0
    s.worker_seen(b"mute", now=4.9)  # heartbeats, never answers
    s.tick(now=4.9)
    assert s.drain() == []
    s.tick(now=5.0)
    dropped, again = s.drain()
    assert dropped.worker == b"mute" and "no answer" in dropped.reason and again.worker == b"good"
    s.job_done(b"good", again.job_id, scores_for(again), now=5.5)
    assert s.drain()[0].scores.tolist() == [0, 1]


def test_the_only_worker_is_not_dropped_for_a_slow_job():
    s = make(job_floor=5.0, heartbeat_expiry=100, request_timeout=60)
    s.worker_ready(b"slow", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    s.tick(now=5.0)
    assert s.drain() == [] and b"slow" in s.workers
    s.job_done(b"slow", job.job_id, scores_for(job), now=7)
    assert isinstance(s.drain()[0], Reply)


def test_the_allowance_follows_the_workers_measured_time_per_character():
    s = make(job_floor=1.0, heartbeat_expiry=100, request_timeout=100, max_batch_pairs=40)
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"warm", Task("q", ["x" * 9] * 10), now=0)  # 10 pairs of 10 characters
    (job,) = s.drain()
    s.job_done(b"w", job.job_id, np.zeros(10, np.float32), now=1.0)  # 0.01 s a character
    s.drain()
    s.submit(b"c", b"long", Task("q", ["x" * 99] * 20), now=1.0)  # 20 pairs of 100 characters
    (long,) = s.drain()
    assert s.jobs[long.job_id].deadline == pytest.approx(1.0 + 4 * 2000 * 0.01)  # JOB_SLACK x 2000 x 0.01 s
    s.worker_ready(b"new", {}, now=1.0)  # not measured: the pool's mean
    s.submit(b"c", b"short", Task("q", ["x" * 9] * 5), now=1.0)
    (short,) = s.drain()
    assert short.worker == b"new" and s.jobs[short.job_id].deadline == pytest.approx(1.0 + 4 * 50 * 0.01)


# -- admission in pairs, against the measured rate --------------------------------------------

def measured(s, worker=b"w", pairs=10, seconds=1.0):
    """A worker that scored `pairs` pairs in `seconds`: the pool's rate is known."""
    s.worker_ready(worker, {}, now=0)
    s.submit(b"c", b"warm-" + worker, Task("q", sents(pairs)), now=0)
    (job,) = s.drain()
    s.job_done(worker, job.job_id, scores_for(job), now=seconds)
    s.drain()


def test_a_request_the_pool_cannot_reach_in_time_is_refused_at_once_with_when_to_retry():
    s = make(request_timeout=10, max_batch_pairs=10)
    measured(s)  # 10 pairs/s: a job of 10 pairs takes 1 s
    assert s.status()["pairs_per_s"] == 10
    s.submit(b"c", b"r1", Task("q", sents(50)), now=1)  # 5 s of work, and 1 s for the last job: taken
    s.submit(b"c", b"r2", Task("q", sents(30)), now=1)  # 8 + 1 s: taken
    assert not any(isinstance(a, Fail) for a in s.drain())
    s.submit(b"c", b"r3", Task("q", sents(20)), now=1)  # 10 + 1 s > 10 s
    (fail,) = s.drain()
    assert fail.rid == b"r3" and fail.kind is ErrorKind.OVERLOADED
    assert fail.retry_after == pytest.approx(1.0) and "10.0 pairs/s" in fail.message
    assert s.stats["overloaded"] == 1 and s.pending_pairs == 80


def test_the_pairs_held_are_bounded_but_one_request_alone_is_always_taken():
    s = make(max_queued_pairs=10)
    s.submit(b"c", b"big", Task("q", sents(30)), now=0)  # alone: taken, though over the bound
    s.submit(b"c", b"more", Task("q", sents(1)), now=0)
    (fail,) = s.drain()
    assert fail.rid == b"more" and fail.kind is ErrorKind.OVERLOADED and "limit of 10" in fail.message
    assert fail.retry_after is None  # no rate measured yet: the gateway's default applies
    s.cancel(b"c", b"big")
    assert s.pending_pairs == 0
    s.submit(b"c", b"after", Task("q", sents(10)), now=1)
    assert s.drain() == [] and s.pending_pairs == 10


def test_pending_pairs_follow_answers_failures_and_timeouts():
    s = make(request_timeout=5, max_batch_pairs=2)
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"a", Task("q", sents(3)), now=0)
    s.submit(b"c", b"b", Task("q", sents(4)), now=0)
    (job,) = s.drain()
    assert s.pending_pairs == 7
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    assert s.pending_pairs == 5
    s.tick(now=5)  # both time out
    assert s.pending_pairs == 0 and not s.requests


def test_a_request_sent_again_while_held_is_not_scored_twice():
    s = make()
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0.1)  # the client's re-send after a broker restart
    (job,) = s.drain()
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    assert [type(a) for a in s.drain()] == [Reply]
    assert s.stats["requests"] == 1


def test_job_ids_carry_the_brokers_prefix():
    s = make(job_prefix=b"e1/")
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(1)), now=0)
    (job,) = s.drain()
    assert job.job_id.startswith(b"e1/")


def test_workers_that_have_answered_a_job_come_first():
    s = make()
    s.worker_ready(b"proven", {}, now=0)
    s.submit(b"c", b"r1", Task("q", sents(1)), now=0)
    (job,) = s.drain()
    s.worker_ready(b"new", {}, now=0.1)  # idle since 0.1, longer than "proven" will be
    s.job_done(b"proven", job.job_id, scores_for(job), now=0.5)
    s.drain()
    s.submit(b"c", b"r2", Task("q", sents(1)), now=1)
    s.submit(b"c", b"r3", Task("q", sents(1)), now=1)
    assert [a.worker for a in s.drain()] == [b"proven", b"new"]  # the new one when no other is idle
    assert s.status()["idle"] == 0


# -- the score cache ------------------------------------------------------------------------

STUB = {"model": "m", "backend": "onnx", "precision": "fp32", "max_length": 512}


def cached(**kw) -> Scheduler:
    return make(cache=ScoreCache(1 << 20), **kw)


def serve(s, worker, scores=None, **kw):
    """Answer the one job in the outbox (with `scores`, or scores_for it); the actions that follow."""
    (job,) = [a for a in s.drain() if isinstance(a, SendJob)]
    s.job_done(worker, job.job_id, scores_for(job) if scores is None else scores, now=1, **kw)
    return job, s.drain()


def test_a_repeated_request_is_answered_from_the_cache_bit_for_bit_without_a_worker():
    s = cached()
    s.worker_ready(b"w", STUB, now=0)
    s.submit(b"c", b"r1", Task("q", sents(4)), now=0)
    odd = np.frombuffer(np.array([0x3DCCCCCD, 0x00000001, 0x80000000, 0x7F7FFFFF], np.uint32).tobytes(), np.float32)
    _, (first,) = serve(s, b"w", odd)  # 0.1f, the least subnormal, -0.0, the greatest float32
    s.submit(b"c", b"r2", Task("q", sents(4)), now=5)
    (again,) = s.drain()  # no job: the answer at once
    assert isinstance(again, Reply) and again.scores.tobytes() == first.scores.tobytes() == odd.tobytes()
    assert again.meta == {"queue_ms": 0.0, "compute_ms": 0.0, "inference_ms": 0.0, "cached": 4}
    assert first.meta["cached"] == 0
    status = s.status()
    assert (status["cache_hits"], status["cache_misses"], status["cache"]["entries"]) == (4, 4, 4)
    assert status["requests"] == 2 and status["pairs"] == 8 and status["pool"][0]["pairs"] == 4


def test_a_partly_cached_request_sends_only_the_rest_and_merges_in_order():
    s = cached(max_batch_pairs=100)
    s.worker_ready(b"w", STUB, now=0)
    s.submit(b"c", b"r1", Task("q", ["s1", "s3", "s5"]), now=0)
    serve(s, b"w")
    s.submit(b"c", b"r2", Task("q", ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]), now=2)
    job, (reply,) = serve(s, b"w", compute_ms=8.0)
    assert [t.sentences for t in job.tasks] == [["s0", "s2", "s4", "s6"]]
    assert reply.scores.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert reply.meta["cached"] == 3 and reply.meta["inference_ms"] == 8.0


def test_the_key_holds_the_options_the_query_and_the_workers_mode():
    s = cached()
    s.worker_ready(b"w", STUB, now=0)
    s.submit(b"c", b"r1", Task("q", sents(2)), now=0)
    serve(s, b"w")
    for rid, task in ((b"raw", Task("q", sents(2), ScoreOptions(raw=True))),
                      (b"left", Task("q", sents(2), ScoreOptions(truncation_side="left"))),
                      (b"strict", Task("q", sents(2), ScoreOptions(truncate=False))),
                      (b"other query", Task("q2", sents(2)))):
        s.submit(b"c", rid, task, now=1)
        job, (reply,) = serve(s, b"w")
        assert reply.meta["cached"] == 0 and job.tasks[0].sentences == sents(2), rid
    s.worker_gone(b"w", now=2, graceful=True)
    s.worker_ready(b"int8", {**STUB, "precision": "int8"}, now=2)
    s.submit(b"c", b"new mode", Task("q", sents(2)), now=2)
    job, (reply,) = serve(s, b"int8")
    assert reply.meta["cached"] == 0 and job.tasks[0].sentences == sents(2)


def test_in_a_pool_of_two_modes_nothing_is_looked_up_and_each_score_is_kept_under_its_workers_mode():
    s = cached(min_split_pairs=2)
    s.worker_ready(b"old", STUB, now=0)
    s.worker_ready(b"new", {**STUB, "precision": "int8"}, now=0)  # a rolling update, half way
    s.submit(b"c", b"r1", Task("q", sents(2)), now=0)
    s.submit(b"c", b"r2", Task("q", sents(2)), now=0)  # the same pairs, not looked up: scored again
    jobs = {a.worker: a for a in s.drain()}
    s.job_done(b"old", jobs[b"old"].job_id, scores_for(jobs[b"old"]), now=1)
    s.job_done(b"new", jobs[b"new"].job_id, scores_for(jobs[b"new"]) + 100, now=1)
    assert [r.meta["cached"] for r in s.drain()] == [0, 0]
    assert (s.status()["cache_hits"], s.status()["cache_misses"], s.status()["cache"]["entries"]) == (0, 4, 4)
    s.worker_gone(b"new", now=2, graceful=True)  # the update rolled back: the old mode's scores
    s.submit(b"c", b"r3", Task("q", sents(2)), now=2)
    (reply,) = s.drain()
    assert reply.meta["cached"] == 2 and reply.scores.tolist() == [0, 1]
    s.worker_gone(b"old", now=3, graceful=True)  # the update done: the new mode's
    s.worker_ready(b"new", {**STUB, "precision": "int8"}, now=3)
    s.submit(b"c", b"r4", Task("q", sents(2)), now=3)
    (reply,) = s.drain()
    assert reply.meta["cached"] == 2 and reply.scores.tolist() == [100, 101]


@pytest.mark.parametrize("failed_scores", ["any", "nan"])
def test_the_scores_of_a_failed_task_are_never_cached(failed_scores):
    s = cached(max_batch_pairs=8)
    s.submit(b"c", b"bad", Task("qa", sents(2)), now=0)
    s.submit(b"c", b"good", Task("qb", sents(2)), now=0)
    s.worker_ready(b"w", STUB, now=0)
    (job,) = s.drain()
    scores = scores_for(job)
    if failed_scores == "nan":
        scores[:2] = np.nan
    s.job_done(b"w", job.job_id, scores, now=1, errors={0: (ErrorKind.TOO_LONG, "too long")})
    s.drain()
    assert s.status()["cache"]["entries"] == 2
    s.submit(b"c", b"bad again", Task("qa", sents(2)), now=2)
    assert [type(a) for a in s.drain()] == [SendJob]
    s.submit(b"c", b"good again", Task("qb", sents(2)), now=2)
    assert [type(a) for a in s.drain()] == [Reply]


def test_the_scores_of_a_cancelled_request_still_fill_the_cache():
    s = cached()
    s.worker_ready(b"w", STUB, now=0)
    s.submit(b"c", b"gone", Task("q", sents(2)), now=0)
    (job,) = s.drain()
    s.cancel(b"c", b"gone")
    s.job_done(b"w", job.job_id, scores_for(job), now=1)
    s.submit(b"c", b"back", Task("q", sents(2)), now=2)
    (reply,) = s.drain()
    assert reply.scores.tolist() == [0, 1] and reply.meta["cached"] == 2


def test_without_a_cache_the_meta_says_nothing_of_one():
    s = make()
    s.worker_ready(b"w", STUB, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    _, (reply,) = serve(s, b"w")
    assert "cached" not in reply.meta and s.status()["cache"] is None and s.status()["cache_hits"] == 0


# -- tokens the workers report --------------------------------------------------------------

def test_tokens_are_shared_out_by_weight_summed_per_request_and_counted():
    s = make(max_batch_pairs=8)
    s.submit(b"c", b"long", Task("q", ["x" * 83, "y" * 83]), now=0)  # 2 pairs of 100 in weight
    s.submit(b"c", b"short", Task("q", ["s" * 33]), now=0)  # 1 pair of 50
    s.worker_ready(b"w", {}, now=0)
    (job,) = s.drain()
    s.job_done(b"w", job.job_id, np.zeros(3, np.float32), now=1, compute_ms=250.0, tokens=125)
    replies = {r.rid: r.meta for r in s.drain()}
    assert (replies[b"long"]["tokens"], replies[b"short"]["tokens"]) == (100, 25)
    assert (replies[b"long"]["inference_ms"], replies[b"short"]["inference_ms"]) == (200.0, 50.0)
    s.submit(b"c", b"split", Task("q", sents(12)), now=1)
    for tokens in (40, 7):
        (job,) = s.drain()
        s.job_done(b"w", job.job_id, scores_for(job), now=2, tokens=tokens)
    (reply,) = s.drain()
    assert reply.meta["tokens"] == 47 and s.status()["tokens"] == 172


def test_a_result_without_tokens_leaves_them_out():
    s = make()
    s.worker_ready(b"w", {}, now=0)
    s.submit(b"c", b"r", Task("q", sents(2)), now=0)
    _, (reply,) = serve(s, b"w")
    assert "tokens" not in reply.meta and s.status()["tokens"] == 0


# -- pieces of equal weight -----------------------------------------------------------------

def mixed_sentences(n: int, seed: int) -> list[str]:
    """One in four sentences of 300 words, the others of 10: a mixed-length request."""
    rng = np.random.default_rng(seed)
    return [" ".join(["word"] * (300 if rng.random() < 0.25 else 10)) for _ in range(n)]


def weight(tasks) -> int:
    return sum(len(t.query) + len(x) + PAIR_CHARS for t in tasks for x in t.sentences)


def makespan(s: Scheduler, workers: int, task: Task) -> float:
    """When the last job of `task` over idle `workers` ends, if every job takes its weight in time:
    workers take the next job as they finish (an event simulation, no clock)."""
    running: list[tuple[int, bytes, SendJob]] = []

    def start(now):
        for a in s.drain():
            if isinstance(a, SendJob):
                running.append((now + weight(a.tasks), a.worker, a))
        running.sort(key=lambda r: (r[0], r[1]))
    for i in range(workers):
        s.worker_ready(b"w%d" % i, {}, now=0)
    s.submit(b"c", b"r", task, now=0)
    start(0)
    end = 0
    while running:
        end, worker, job = running.pop(0)
        s.job_done(worker, job.job_id, scores_for_any(job), now=end)
        start(end)
    return end


def scores_for_any(job: SendJob) -> np.ndarray:
    return np.zeros(sum(len(t.sentences) for t in job.tasks), np.float32)


@pytest.mark.parametrize("workers", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_a_mixed_length_request_is_split_in_pieces_of_equal_weight(workers, seed):
    # W240 of short and long sentences over k idle workers, at most 64 pairs a job: the last
    # worker ends within 10% of the ideal, each worker's share of the weight (pairs split by count
    # end up to 1.5 times it here).
    s = make(max_batch_pairs=64, min_split_pairs=16, request_timeout=1e9, heartbeat_expiry=1e9)
    task = Task("a query of eight words or so here", mixed_sentences(240, seed))
    ideal = weight([task]) / workers
    assert makespan(s, workers, task) / ideal <= 1.1
