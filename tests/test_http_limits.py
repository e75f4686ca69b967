"""Slow, idle and greedy HTTP clients, played with raw sockets against the real gateway.

Each must be closed after its timeout (the bound asserted is the timeout plus a margin for a loaded
machine, never a speed), while normal requests keep being served."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time

import orjson
import pytest

from tests.test_gateway import QUERY, SENTENCES, expected_body

TIMEOUT = 1.0    # header, body and keep-alive timeouts of the gateway under test, in seconds
MARGIN = 5.0     # how late a close may come on a busy 2-core machine
BODY = orjson.dumps({"query": QUERY, "sentences": SENTENCES, "ids": list(range(len(SENTENCES)))})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.service import Service

    svc = Service(tmp_path_factory.mktemp("limits"), RERANKER_HEADER_TIMEOUT=str(TIMEOUT),
                  RERANKER_BODY_TIMEOUT=str(TIMEOUT), RERANKER_KEEPALIVE_TIMEOUT=str(TIMEOUT),
                  RERANKER_MAX_BODY_BYTES="20000")
    try:
        yield svc.start(workers=1)
    finally:
        svc.stop()


def connect(svc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", svc.port), timeout=10)


def until_closed(sock: socket.socket, within: float = TIMEOUT + MARGIN) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    sock.settimeout(within)
    started, data = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the connection is still open after {within:g} s; got {data[:200]!r}") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def one_response(sock: socket.socket) -> bytes:
    """One whole response (it has a content-length), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def post_head(length: int | None, *extra: bytes) -> bytes:
    size = b"content-length: %d\r\n" % length if length is not None else b"transfer-encoding: chunked\r\n"
    return (b"POST /rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + size
            + b"".join(h + b"\r\n" for h in extra) + b"\r\n")


def test_an_idle_connection_is_closed_at_the_header_timeout(gateway):
    with connect(gateway) as sock:
        data, elapsed = until_closed(sock)
    assert data == b"" and elapsed >= TIMEOUT * 0.9


class Trickle:
    """Sends `first`, then `more` every 0.2 s, until the server closes the connection or the block ends:
    each piece comes in time, the whole never does."""

    def __init__(self, sock: socket.socket, first: bytes, more: bytes) -> None:
        self.sock, self.first, self.more = sock, first, more
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.send)

    def send(self) -> None:
        try:
            self.sock.sendall(self.first)
            while not self.stop.wait(0.2):
                self.sock.sendall(self.more)
        except OSError:
            pass  # closed by the server

    def __enter__(self) -> "Trickle":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_headers_sent_slowly_are_cut_at_the_deadline(gateway):
    with connect(gateway) as sock, Trickle(sock, b"GET /health HTTP/1.1\r\n", b"x-slow: 1\r\n"):
        data, elapsed = until_closed(sock)
    assert data == b"" and elapsed >= TIMEOUT * 0.9


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("origin", [False, True], ids=["fast-path", "fastapi-route"])
def test_a_stalled_body_gets_408_and_the_connection_closed(gateway, chunked, origin):
    head = post_head(None if chunked else len(BODY), *([b"origin: https://a.example"] if origin else []))
    part = BODY[:10]
    with connect(gateway) as sock:
        sock.sendall(head + (b"%x\r\n%s\r\n" % (len(part), part) if chunked else part))
        data, elapsed = until_closed(sock)
    assert status_of(data) == 408, data
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert orjson.loads(body) == {"detail": f"the request body stalled: nothing of it arrived for {TIMEOUT:g} s "
                                            "(RERANKER_BODY_TIMEOUT)"}
    assert elapsed >= TIMEOUT * 0.9


def test_an_idle_keep_alive_connection_is_closed(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        first = one_response(sock)
        assert status_of(first) == 200 and b"connection: close" not in first.lower()
        data, elapsed = until_closed(sock)
    assert data == b"" and elapsed >= TIMEOUT * 0.9


def test_a_body_over_the_limit_is_refused_before_it_is_sent_and_must_not_linger(gateway):
    # Over RERANKER_MAX_BODY_BYTES: the 413 comes before any of the body; then the body trickles in,
    # a few bytes at a time, and the connection is closed at the body timeout all the same.
    with connect(gateway) as sock, Trickle(sock, post_head(30_000), b" "):
        data, elapsed = until_closed(sock)
    assert status_of(data) == 413 and b"20000" in data
    assert elapsed >= TIMEOUT * 0.9


def test_headers_over_16_kib_get_431(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 8000 + b"\r\n")
        try:
            for _ in range(100):  # 800 KB more, unless the server shuts the door first
                sock.sendall(b"x-pad: " + b"a" * 8000 + b"\r\n")
        except OSError:
            pass
        data, _ = until_closed(sock)
    assert status_of(data) == 431, data[:200]


def test_requests_keep_being_served_among_slow_clients(gateway):
    slow = []
    for i in range(60):  # idle, half a header, a stalled body, in turn
        sock = connect(gateway)
        sock.sendall([b"", b"POST /rerank HTTP/1.1\r\nhost: x\r\n", post_head(len(BODY)) + BODY[:5]][i % 3])
        slow.append(sock)
    try:
        started = time.monotonic()
        with cf.ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda i: gateway.http.post("/rerank", content=BODY,
                                                                  headers={"content-type": "application/json"}),
                                      range(20)))
        took = time.monotonic() - started
        assert all(r.content == expected_body(QUERY, SENTENCES, list(range(len(SENTENCES)))) for r in responses)
        print(f"20 requests among 60 slow connections: {took:.2f} s")
        for sock in slow:
            until_closed(sock)  # and the slow ones are all let go
    finally:
        for sock in slow:
            sock.close()


def request_on_new_connection(svc, path: str = "/health") -> int:
    with connect(svc) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
        return status_of(one_response(sock))


def test_connections_beyond_the_limit_get_503_until_idle_ones_time_out(service_factory):
    svc = service_factory(RERANKER_MAX_CONNECTIONS="4", RERANKER_HEADER_TIMEOUT="2").start(workers=0)
    svc.http.close()  # its kept-alive connection would count too
    idle = [connect(svc) for _ in range(3)]
    try:
        time.sleep(0.2)  # accepted by the server
        assert request_on_new_connection(svc) == 200  # the fourth connection: at the limit
        idle.append(connect(svc))
        time.sleep(0.2)
        assert request_on_new_connection(svc) == 503  # the fifth
        for sock in idle:
            until_closed(sock, 2 + MARGIN)
        assert request_on_new_connection(svc) == 200
    finally:
        for sock in idle:
            sock.close()
