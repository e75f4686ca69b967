"""The gateway's broker client against a bare ROUTER socket playing the broker."""

import asyncio
import logging

import numpy as np
import pytest
import zmq
import zmq.asyncio

from gateway.client import BrokerClient
from gateway.errors import ServiceError
from shared import protocol as p
from shared.protocol import ErrorKind
from shared.settings import Settings


async def receive(broker, kind=p.REQUEST, epoch=b"e1"):
    """The next message of `kind` the fake broker gets; PINGs on the way are answered with `epoch`."""
    while True:
        identity, *frames = await asyncio.wait_for(broker.recv_multipart(), 5)
        msg = p.decode(frames)
        if msg.kind == p.PING and kind != p.PING:
            await broker.send_multipart([identity, *p.encode(p.PONG, epoch)])
        else:
            assert msg.kind == kind, msg
            return identity, msg


async def connected(broker, client, epoch=b"e1"):
    """Answer the client's first PING, so that it knows the broker's epoch before it sends."""
    identity, _ = await receive(broker, kind=p.PING)
    await broker.send_multipart([identity, *p.encode(p.PONG, epoch)])
    while client.epoch != epoch:
        await asyncio.sleep(0.01)


def talk(tmp_path, answer):
    """Send one rerank of two sentences; `answer(rid)` gives the frames the fake broker sends back."""
    url = f"ipc://{tmp_path}/frontend.ipc"

    async def run():
        ctx = zmq.asyncio.Context()
        broker = ctx.socket(zmq.ROUTER)
        broker.bind(url)
        client = BrokerClient(Settings(frontend_url=url, request_timeout=2))
        await client.start()
        await connected(broker, client)
        try:
            call = asyncio.create_task(client.rerank(p.Task("q", ["a", "b"])))
            identity, msg = await receive(broker)
            for reply in answer(msg.args[0]):
                await broker.send_multipart([identity, *reply])
            return await call
        finally:
            await client.close()
            broker.close(0)
            ctx.term()

    return asyncio.run(run())


def test_scores_come_back(tmp_path):
    scores = np.array([0.25, 0.75], np.float32)
    meta = {"queue_ms": 1.5, "compute_ms": 20.0, "inference_ms": 18.0}
    got = talk(tmp_path, lambda rid: [p.encode(p.REPLY, rid, p.encode_scores(scores), p.encode_json(meta))])
    assert got.scores.tolist() == [0.25, 0.75] and got.meta == meta


@pytest.mark.parametrize("kind", [ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.WORKER_FAILED])
def test_a_fail_is_raised_as_its_kind(tmp_path, kind):
    with pytest.raises(ServiceError) as failed:
        talk(tmp_path, lambda rid: [p.encode(p.FAIL, rid, p.encode_kind(kind), b"why")])
    assert (failed.value.kind, failed.value.message) == (kind, "why")


@pytest.mark.parametrize("reply", [
    lambda rid: p.encode(p.FAIL, rid, b"429", b"why"),  # an HTTP status, not a kind
    lambda rid: p.encode(p.REPLY, rid, p.encode_scores(np.zeros(3, np.float32)), b"{}"),  # 3 scores for 2
    lambda rid: p.encode(p.REPLY, rid, p.encode_scores(np.zeros(2, np.float32)), b"[]"),  # meta not an object
    lambda rid: p.encode(p.STATUS, rid, b"{}"),
])
def test_an_answer_out_of_protocol_is_a_bad_reply(tmp_path, reply):
    with pytest.raises(ServiceError) as failed:
        talk(tmp_path, lambda rid: [reply(rid)])
    assert failed.value.kind is ErrorKind.BAD_REPLY


def test_malformed_frames_are_logged_and_dropped(tmp_path, caplog):
    scores = np.array([0.5, 0.5], np.float32)
    with caplog.at_level(logging.WARNING, logger="reranker.gateway"):
        got = talk(tmp_path, lambda rid: [[b"RRK0", p.REPLY, rid], p.encode(p.HEARTBEAT),
                                          p.encode(p.REPLY, rid, p.encode_scores(scores), b"{}")])
    assert got.scores.tolist() == [0.5, 0.5]  # the good answer after the bad ones still arrives
    logged = [r.getMessage() for r in caplog.records]
    assert any("malformed" in m and "version" in m for m in logged), logged
    assert any("unexpected HEARTBEAT" in m for m in logged), logged


def test_a_request_given_up_is_cancelled_at_the_broker(tmp_path):
    """The caller goes away (its task is cancelled): the broker hears CANCEL for that request."""
    url = f"ipc://{tmp_path}/frontend.ipc"

    async def run():
        ctx = zmq.asyncio.Context()
        broker = ctx.socket(zmq.ROUTER)
        broker.bind(url)
        client = BrokerClient(Settings(frontend_url=url, request_timeout=5))
        await client.start()
        await connected(broker, client)
        try:
            call = asyncio.create_task(client.rerank(p.Task("q", ["a"])))
            _, request = await receive(broker)
            call.cancel()
            _, cancel = await receive(broker, p.CANCEL)
            return request, cancel
        finally:
            await client.close()
            broker.close(0)
            ctx.term()

    request, cancel = asyncio.run(run())
    assert cancel.kind == p.CANCEL and cancel.args == (request.args[0],)


def test_an_overloaded_answer_carries_the_brokers_retry_after(tmp_path):
    with pytest.raises(ServiceError) as failed:
        talk(tmp_path, lambda rid: [p.encode(p.FAIL, rid, p.encode_kind(ErrorKind.OVERLOADED), b"busy",
                                             p.encode_retry_after(7.25))])
    assert failed.value.kind is ErrorKind.OVERLOADED and failed.value.retry_after == 7.25


def test_requests_unanswered_are_sent_again_when_the_broker_restarts(tmp_path):
    """A PONG with a new epoch: the broker has restarted and lost what it held. The client sends
    it the requests still waiting, and their answers from the new broker arrive."""
    url = f"ipc://{tmp_path}/frontend.ipc"
    scores = np.array([0.5, 0.25], np.float32)

    async def run():
        ctx = zmq.asyncio.Context()
        broker = ctx.socket(zmq.ROUTER)
        broker.bind(url)
        client = BrokerClient(Settings(frontend_url=url, request_timeout=10, heartbeat_interval=0.05))
        await client.start()
        await connected(broker, client, b"old")
        try:
            calls = [asyncio.create_task(client.rerank(p.Task(f"q{i}", ["a", "b"]))) for i in range(3)]
            first = {}
            while len(first) < 3:
                identity, msg = await receive(broker, epoch=b"old")
                first[msg.args[0]] = msg.args[1]
            answered = next(iter(first))  # the old broker answers one before it dies
            await broker.send_multipart([identity, *p.encode(p.REPLY, answered, p.encode_scores(scores), b"{}")])
            again = {}
            while len(again) < 2:
                identity, msg = await receive(broker, epoch=b"new")
                again[msg.args[0]] = msg.args[1]
            for rid in again:
                await broker.send_multipart([identity, *p.encode(p.REPLY, rid, p.encode_scores(scores), b"{}")])
            results = await asyncio.gather(*calls)
            return first, again, answered, results, client.resent
        finally:
            await client.close()
            broker.close(0)
            ctx.term()

    first, again, answered, results, resent = asyncio.run(run())
    assert set(again) == set(first) - {answered}  # the unanswered ones, not the answered one
    assert all(again[rid] == first[rid] for rid in again)  # the same request bodies
    assert all(r.scores.tolist() == [0.5, 0.25] for r in results) and resent == 2


def test_the_clients_warnings_about_the_broker_are_rate_limited(tmp_path, caplog):
    scores = np.array([0.5, 0.5], np.float32)
    garbage = [[b"RRK0", p.REPLY, b"x"]] * 500
    with caplog.at_level(logging.WARNING, logger="reranker.gateway"):
        talk(tmp_path, lambda rid: [*garbage, p.encode(p.REPLY, rid, p.encode_scores(scores), b"{}")])
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)
