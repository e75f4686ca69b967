"""Peers on the workers port that are gone, frozen, mute or hostile, on real sockets
(tests/inproc_broker.py): the broker keeps serving its real worker, and every request is answered.
"""

from __future__ import annotations

import logging
import time

import pytest

from shared import protocol as p
from tests.inproc_broker import QUERY, SENTENCES, READY_INFO, InprocBroker, scores_of, stub_scores


def ask(lab, n: int, timeout: float) -> dict[bytes, list[p.Message]]:
    caller = lab.caller()
    rids = [caller.request(QUERY, SENTENCES) for _ in range(n)]
    return caller.collect(rids, timeout=timeout)


def assert_all_scored(answers: dict[bytes, list[p.Message]]) -> None:
    kinds = {rid: [m.name if m.kind == p.REPLY else p.decode_kind(m.args[1]).value for m in msgs]
             for rid, msgs in answers.items()}
    assert all(k == ["REPLY"] for k in kinds.values()), kinds
    assert all(scores_of(msgs[0]) == stub_scores(QUERY, SENTENCES) for msgs in answers.values())


def test_a_ready_flood_from_departed_sockets_costs_no_request(tmp_path):
    """1,000 READYs from sockets that then closed, and 40 requests at once: a job sent to a departed
    worker fails to send and goes on to the next without using up the request's retries; the
    departed are purged as sends to them fail, not at their expiry (10 s here, with the default
    1 s heartbeat)."""
    lab = InprocBroker(tmp_path, heartbeat_interval=1.0, heartbeat_liveness=10)
    try:
        lab.good_worker()
        lab.wait_workers(1)
        flood = [lab.peer() for _ in range(1000)]
        lab.wait_workers(1001, timeout=60)
        for peer in flood:
            peer.close()
        answers = ask(lab, 40, timeout=8)
        assert_all_scored(answers)
        status = lab.wait_workers(1, timeout=5)  # the rest gone within a heartbeat or two, not 10 s
        assert status["failed"] == 0
    finally:
        lab.stop()


@pytest.mark.parametrize("trial", range(4))
def test_frozen_idle_workers_do_not_get_work_while_a_live_one_waits(tmp_path, trial):
    """6 workers that have served freeze while idle (their connections stay open, so sends to them
    succeed) and one stays healthy: the requests that go to a frozen one come back at its expiry and
    go to the healthy one, not to another frozen one; none fails. (Heartbeats every 0.5 s here, so
    that the raw peers, which heartbeat only when the test says, live through the set-up.)"""
    lab = InprocBroker(tmp_path, heartbeat_interval=0.5)
    try:
        frozen = [lab.peer() for _ in range(6)]
        lab.wait_workers(6)
        lab.good_worker(stub_delay_ms=100)  # slower: the six are idle longer once all have served
        lab.wait_workers(7)
        caller = lab.caller()
        warm = [caller.request(QUERY, SENTENCES) for _ in range(7)]  # one each
        for peer in frozen:
            job = peer.next(p.JOB)
            assert job is not None
            peer.answer(job)
        assert_all_scored(caller.collect(warm, timeout=5, linger=0))
        for peer in frozen:
            peer.send(p.HEARTBEAT)  # healthy until now; then silent, as SIGSTOP leaves them
        assert lab.caller().status()["workers"] == 7
        answers = ask(lab, 2, timeout=10)
        assert any(peer.next(p.JOB, timeout=0.1) for peer in frozen), "a frozen worker should have been tried"
        assert_all_scored(answers)
        assert lab.caller().status()["failed"] == 0
    finally:
        lab.stop()


def test_workers_that_heartbeat_but_never_answer_do_not_hold_requests_to_their_timeout(tmp_path):
    """20 peers join a serving pool, say READY, heartbeat, and answer no job. They get work only while
    the real worker is busy; each job they take is taken back after the job allowance (here its
    floor, a quarter of the 8 s request timeout), goes to the worker that answers, and the mute
    peers are dropped. No request waits for its timeout."""
    lab = InprocBroker(tmp_path, request_timeout=8)
    try:
        lab.good_worker(stub_delay_ms=5)
        lab.wait_workers(1)
        assert_all_scored(ask(lab, 1, timeout=5))  # it has answered a job: it comes first from now on
        mute = [lab.peer() for _ in range(20)]
        lab.wait_workers(21)
        caller = lab.caller()
        rids = [caller.request(QUERY, SENTENCES) for _ in range(30)]
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline and not all(r in caller.answers for r in rids):
            for peer in mute:
                peer.send(p.HEARTBEAT)
            caller.collect([], timeout=0, linger=0.05)
        assert_all_scored(caller.collect(rids, timeout=0, linger=0))
        status = caller.status()
        assert status["dropped"] >= 1 and status["failed"] == 0, status
    finally:
        lab.stop()


def test_a_worker_whose_connection_is_gone_is_purged_at_once_not_at_expiry(tmp_path):
    """A worker is killed holding a job: its connection closes, and the broker's next heartbeat to it
    fails. Its expiry here is 30 s, past the request's 5 s timeout: only the failed send can save the
    request."""
    lab = InprocBroker(tmp_path, heartbeat_liveness=300, request_timeout=5)
    try:
        victim = lab.peer()
        lab.wait_workers(1)
        lab.good_worker()
        lab.wait_workers(2)
        caller = lab.caller()
        rid = caller.request(QUERY, SENTENCES)
        assert victim.next(p.JOB) is not None
        victim.close()  # as SIGKILL closes it
        assert_all_scored(caller.collect([rid], timeout=4.5))
    finally:
        lab.stop()


def test_garbage_bad_readys_and_oversized_frames_are_dropped_and_the_broker_keeps_serving(tmp_path, caplog):
    lab = InprocBroker(tmp_path, max_message_bytes=64 * 1024)
    try:
        lab.good_worker()
        lab.wait_workers(1)
        with caplog.at_level(logging.INFO, logger="reranker.broker"):
            garbage = lab.peer(ready=False)
            for frames in ([b"hello"], [b"RRK2"], [b"RRK2", b"\x7f"], [p.VERSION, p.RESULT, b"1"],
                           [b"\xff" * 100, b"\x00"], [p.VERSION, p.HEARTBEAT, b"extra"]):
                garbage.send_raw(frames)
            old = lab.peer(ready=False)
            old.send_raw([b"RRK1", p.READY, p.encode_json(READY_INFO)])  # another version: not even REFUSEd
            liars = {
                "not json": b"{", "no pid": p.encode_json({k: v for k, v in READY_INFO.items() if k != "pid"}),
                "other protocol": p.encode_json({**READY_INFO, "protocol": "RRK9"}),
                "pid as text": p.encode_json({**READY_INFO, "pid": "1"}),
            }
            refused = {}
            for name, info in liars.items():
                peer = lab.peer(ready=False)
                peer.send(p.READY, info)
                refused[name] = peer.next(p.REFUSE, timeout=5)
            big = lab.peer()
            big.send_raw([p.VERSION, p.HEARTBEAT + b"\x00" * (1 << 20)])  # over MAXMSGSIZE: disconnected
            flood = lab.peer(ready=False)
            for _ in range(500):  # one socket saying READY again and again
                flood.send(p.READY, p.encode_json(READY_INFO))
            answers = ask(lab, 5, timeout=8)
        assert all(msg is not None and p.decode_kind(msg.args[0]) is p.ErrorKind.BAD_REQUEST
                   for msg in refused.values()), refused
        assert old.next(p.REFUSE, timeout=0.2) is None
        assert_all_scored(answers)
        logged = [r.getMessage() for r in caplog.records]
        assert any("malformed" in m and "version" in m for m in logged)
        assert any("refused worker" in m and "protocol 'RRK9'" in m for m in logged)
        assert len(logged) < 100, len(logged)  # 500 READYs and the rest, rate-limited
    finally:
        lab.stop()


def test_a_flood_of_malformed_messages_is_logged_as_a_count(lab, caplog):
    lab.good_worker()
    lab.wait_workers(1)
    rogue = lab.peer(ready=False)
    with caplog.at_level(logging.WARNING, logger="reranker.broker"):
        for _ in range(20_000):
            rogue.send_raw([b"RRK0", b"\x00"])
        answers = ask(lab, 3, timeout=15)  # served after the flood (FIFO per socket pair, not before)
        time.sleep(0.3)
    assert_all_scored(answers)
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(logged) <= 20, len(logged)
