"""Request ids: X-Request-ID on every response (the caller's where sane, else a new one), and the same id
in the gateway's, the broker's and the worker's real log lines about the request; logs as JSON lines."""

from __future__ import annotations

import json

import pytest

from gateway.tracing import request_id
from shared.logs import REQUEST_ID, JsonFormatter, TextFormatter


@pytest.mark.parametrize("given, kept", [
    (b"abc-123", True), (b"5b1f0e3a-9c2d-4e8f-a1b2-c3d4e5f60718", True), (b"req_01:x/y+z=@.", True),
    (b"a" * 128, True), (b"a" * 129, False), (b"", False), (b"has space", False), (b"new\nline", False),
    (b'quote"', False), ("é".encode(), False),
])
def test_the_callers_id_is_kept_only_when_sane(given, kept):
    got = request_id([(b"x-request-id", given)])
    assert (got == given) == kept
    if not kept:
        assert len(got) == 32 and int(got, 16) >= 0  # a new one


def test_a_new_id_each_time_without_one():
    assert request_id([]) != request_id([])


def test_log_formats_carry_the_request_id():
    import logging

    record = logging.LogRecord("reranker.x", logging.INFO, __file__, 1, "scored %d", (3,), None)
    token = REQUEST_ID.set("r-1")
    try:
        line = json.loads(JsonFormatter("gateway").format(record))
        text = TextFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "r-1" and line["message"] == "scored 3" and line["service"] == "gateway"
    assert line["level"] == "info" and line["time"].endswith("Z")
    assert text.endswith("scored 3 request_id=r-1")
    record.request_id = "r-2"  # passed as extra= by the broker and the worker
    assert json.loads(JsonFormatter("worker").format(record))["request_id"] == "r-2"


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_the_id_travels_to_the_broker_and_the_worker_in_json_lines(service_factory, tmp_path):
    svc = service_factory(RERANKER_LOG_FORMAT="json", RERANKER_LOG_LEVEL="debug", RERANKER_ACCESS_LOG="true")
    svc.start(workers=1, RERANKER_LOG_FORMAT="json", RERANKER_LOG_LEVEL="debug")
    r = svc.http.post("/v2/rerank", json={"query": "red apple", "documents": ["a red apple", "car"]},
                      headers={"X-Request-ID": "trace-me-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"
    generated = svc.rerank("red apple", ["apple"]).headers["x-request-id"]

    def lines() -> list[dict]:
        return [line for path in sorted(tmp_path.glob(f"*{svc.port}.log"))
                for line in json_lines(path.read_text(errors="replace"))]

    def about(rid: str) -> set[str]:
        return {line["service"] for line in lines() if rid in line.get("request_id", "").split(",")}

    svc.wait_for(lambda: about("trace-me-42") == {"gateway", "broker", "worker"}, 10, "the id in every log")
    svc.wait_for(lambda: about(generated) == {"gateway", "broker", "worker"}, 10, "the new id in every log")
    access = [x for x in lines() if x.get("request_id") == "trace-me-42" and x["service"] == "gateway"]
    assert any("POST /v2/rerank 200" in x["message"] for x in access)
    # every line of the gateway's processes is JSON, gunicorn's and uvicorn's own too
    gateway_log = (tmp_path / f"gateway-{svc.port}.log").read_text()
    assert "Booting worker" in gateway_log
    stray = [line for line in gateway_log.splitlines() if line.strip() and not line.startswith("{")]
    assert stray == [], stray


def test_every_response_carries_an_id(stub_service):
    for r in (stub_service.get("/health"), stub_service.get("/nothing"), stub_service.rerank("q", ["a"]),
              stub_service.http.post("/rerank", json={"query": "q"}),
              stub_service.http.post("/rerank", json={"query": "q", "sentences": ["a"], "ids": [1]},
                                     headers={"Origin": "https://search.example", "X-Request-ID": "o-1"})):
        assert r.headers["x-request-id"], r
    assert r.headers["x-request-id"] == "o-1"


def test_gunicorns_own_lines_can_be_written_alike(capsys):
    import copy
    import logging.config

    from gunicorn.glogging import CONFIG_DEFAULTS

    from shared.logs import gunicorn_logconfig
    from shared.settings import Settings

    config = copy.deepcopy(CONFIG_DEFAULTS)
    config.update(gunicorn_logconfig(Settings(log_format="json")))  # as gunicorn lays logconfig_dict over it
    try:
        logging.config.dictConfig(config)
        logging.getLogger("gunicorn.error").info("Booting worker with pid: %d", 7)
    finally:
        logging.getLogger("gunicorn.error").handlers[:] = []
        logging.getLogger().handlers[:] = []
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "Booting worker with pid: 7" and line["logger"] == "gunicorn.error"
