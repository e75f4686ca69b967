"""The broker loop with workers that answer wrong, on real sockets (tests/inproc_broker.py).

Each bad answer is refused and logged, the bad worker dropped (told DISCONNECT), and its work done
by a real worker: every request gets one answer, with the right scores.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shared import protocol as p
from tests.inproc_broker import QUERY, SENTENCES, InprocBroker, job_pairs, scores_of, stub_scores


def bad_result(job: p.Message, case: str) -> list[bytes]:
    """A RESULT for `job` that is wrong as `case` says."""
    job_id, n = job.args[0], job_pairs(job)
    good_meta = p.encode_result_meta(1.0)
    scores = {
        "wrong count": np.full(n + 1, 0.5, np.float32),
        "nan": np.array([np.nan] + [0.5] * (n - 1), np.float32),
        "inf": np.array([0.5] * (n - 1) + [np.inf], np.float32),
    }.get(case, np.full(n, 0.5, np.float32))
    if case == "another job":
        job_id = job_id + b"0"
    if case == "malformed meta":
        good_meta = b'{"compute_ms": "soon"}'
    if case == "meta error index out of range":
        good_meta = p.encode_result_meta(1.0, [(7, p.ErrorKind.TOO_LONG, "?")])
    frames = p.encode(p.RESULT, job_id, p.encode_scores(scores), good_meta)
    if case == "scores not float32":
        frames[3] = b"\x00" * (4 * n + 1)
    if case == "wrong arity":
        frames = frames[:-1]
    return frames


CASES = ["wrong count", "nan", "inf", "another job", "malformed meta", "meta error index out of range",
         "scores not float32", "wrong arity"]


@pytest.fixture
def slow_lab(tmp_path):
    """Heartbeats every 0.5 s: a raw peer stays fresh (heard from within 0.75 s) while the test sets up."""
    lab = InprocBroker(tmp_path, heartbeat_interval=0.5)
    yield lab
    lab.stop()


def liar_first(lab):
    """A raw peer, then a good worker: the peer is longest idle, so it is handed the next job."""
    liar = lab.peer()
    lab.wait_workers(1)
    lab.good_worker()
    lab.wait_workers(2)
    return liar


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_answer_is_refused_and_the_work_done_by_another_worker(slow_lab, case, caplog):
    lab = slow_lab
    liar = liar_first(lab)
    caller = lab.caller()
    with caplog.at_level(logging.WARNING, logger="reranker.broker"):
        rid = caller.request(QUERY, SENTENCES)
        job = liar.next(p.JOB)
        assert job is not None, "the liar should have been handed the job"
        liar.send_raw(bad_result(job, case))
        answers = caller.collect([rid], timeout=5)
        assert liar.next(p.DISCONNECT) is not None  # told to start over
    (reply,) = answers[rid]  # one answer, not two
    assert scores_of(reply) == stub_scores(QUERY, SENTENCES)
    assert any("dropped worker" in r.getMessage() or "malformed" in r.getMessage() for r in caplog.records)
    status = caller.status()
    assert status["workers"] == 1 and status["dropped"] + status["redispatched"] >= 1


def test_a_stale_answer_after_a_freeze_is_refused_and_the_request_answered_once(slow_lab):
    """A worker freezes (SIGSTOP) holding a job, is purged, its job is redone elsewhere; when it
    thaws (SIGCONT) and answers, the answer is refused: one REPLY, with the good worker's scores."""
    lab = slow_lab
    frozen = liar_first(lab)
    caller = lab.caller()
    rid = caller.request(QUERY, SENTENCES)
    job = frozen.next(p.JOB)
    assert job is not None
    answers = caller.collect([rid], timeout=8)  # purged after 2.5 s of silence; redone by the good worker
    assert scores_of(answers[rid][0]) == stub_scores(QUERY, SENTENCES)
    frozen.send_raw(bad_result(job, "late but otherwise fine"))  # the thawed worker's late answer
    assert frozen.next(p.DISCONNECT) is not None  # unknown now: told to start over
    answers = caller.collect([rid], timeout=0, linger=0.5)
    assert len(answers[rid]) == 1
    assert caller.status()["purged"] == 1


def test_an_error_from_the_scorer_fails_only_the_request_that_causes_it(lab):
    lab.good_worker(stub_fail_on="POISON", stub_delay_ms=50)
    lab.wait_workers(1)
    caller = lab.caller()
    warm = caller.request("warm", ["up"])  # keeps the worker busy, so the next three merge into one job
    rids = [caller.request(QUERY, SENTENCES), caller.request(QUERY, ["POISON pill", "red"]),
            caller.request(QUERY, SENTENCES[:2])]
    answers = caller.collect([warm, *rids], timeout=5)
    ok1, poisoned, ok2 = (answers[r] for r in rids)
    assert scores_of(ok1[0]) == stub_scores(QUERY, SENTENCES)
    assert scores_of(ok2[0]) == stub_scores(QUERY, SENTENCES[:2])
    (fail,) = poisoned
    assert fail.kind == p.FAIL and p.decode_kind(fail.args[1]) is p.ErrorKind.WORKER_FAILED
    assert b"POISON" in fail.args[2]
    assert caller.status()["isolated"] == 1  # the three ran together first, then apart


def test_the_pong_carries_the_brokers_epoch_and_a_new_broker_has_another(tmp_path):
    epochs = []
    for _ in range(2):
        lab = InprocBroker(tmp_path)
        try:
            caller = lab.caller()
            caller.sock.send_multipart(p.encode(p.PING))
            assert caller.sock.poll(5000)
            msg = p.decode(caller.sock.recv_multipart())
            assert msg.kind == p.PONG
            epochs.append(msg.args[0])
        finally:
            lab.stop()
    assert len(set(epochs)) == 2 and all(len(e) == 16 for e in epochs)


def test_a_second_broker_does_not_take_a_live_brokers_endpoint(tmp_path):
    """Binding an ipc path removes the file first (a crashed broker leaves one): not while a live
    broker listens there, or its gateway processes would lose it to the newcomer."""
    import errno

    import zmq

    from gateway.broker import Broker

    lab = InprocBroker(tmp_path)
    try:
        with pytest.raises(zmq.ZMQError) as taken:
            Broker(lab.settings.model_copy(update={"workers_bind": "tcp://127.0.0.1:0"}), lab.context)
        assert taken.value.errno == errno.EADDRINUSE
        caller = lab.caller()  # the first broker still answers on its endpoint
        caller.sock.send_multipart(p.encode(p.PING))
        assert caller.sock.poll(5000) and p.decode(caller.sock.recv_multipart()).kind == p.PONG
    finally:
        lab.stop()
