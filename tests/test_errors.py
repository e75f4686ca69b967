"""Error kinds: on the wire (FAIL) and as HTTP answers (gateway/errors.py)."""

import json

import pytest

from gateway import errors
from gateway.errors import ServiceError
from shared import protocol as p
from shared.protocol import ErrorKind

# The HTTP contract: status, and whether the caller is told when to retry.
EXPECTED = {
    ErrorKind.OVERLOADED: (429, True),
    ErrorKind.NO_WORKER: (503, True),
    ErrorKind.WORKERS_LOST: (503, True),
    ErrorKind.TIMEOUT: (504, False),
    ErrorKind.WORKER_FAILED: (500, False),
    ErrorKind.BAD_REPLY: (502, False),
    ErrorKind.BAD_REQUEST: (400, False),
    ErrorKind.TOO_LONG: (413, False),
    ErrorKind.UNSUPPORTED: (422, False),
    ErrorKind.WRONG_POOL: (500, False),
    ErrorKind.INVALID_REQUEST: (422, False),
    ErrorKind.TOO_LARGE: (413, False),
    ErrorKind.NOT_READY: (503, False),
    ErrorKind.SHUTTING_DOWN: (503, True),
    ErrorKind.BODY_TIMEOUT: (408, False),
    ErrorKind.UNSUPPORTED_MEDIA: (415, False),
    ErrorKind.UNAUTHORIZED: (401, False),
    ErrorKind.NOT_FOUND: (404, False),
    ErrorKind.METHOD_NOT_ALLOWED: (405, False),
    ErrorKind.WRONG_MODEL: (404, False),
}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_fail_frame_becomes_its_http_answer(kind):
    frames = p.encode(p.FAIL, b"7", p.encode_kind(kind), "why: é".encode())
    msg = p.decode(frames)
    assert msg.kind == p.FAIL and p.decode_kind(msg.args[1]) is kind
    status, body, headers = errors.answer(ServiceError(p.decode_kind(msg.args[1]), msg.args[2].decode()))
    want_status, retry = EXPECTED[kind]
    assert status == want_status
    assert body == '{"detail":"why: é"}'.encode()
    assert (b"retry-after", b"1") in headers if retry else (b"retry-after", b"1") not in headers
    assert ((b"www-authenticate", b"Bearer") in headers) == (kind is ErrorKind.UNAUTHORIZED)


@pytest.mark.parametrize("raw", [b"", b"504", b"OVERLOADED", b"overloaded ", b"\xff"])
def test_unknown_error_kinds_are_refused(raw):
    with pytest.raises(p.ProtocolError, match="unknown error kind"):
        p.decode_kind(raw)
    with pytest.raises(p.ProtocolError):
        p.decode_kind(p.decode(p.encode(p.FAIL, b"7", raw, b"why")).args[1])


def test_an_invalid_request_lists_its_errors_as_fastapi_does():
    listed = [{"type": "missing", "loc": ("body", "ids"), "msg": "Field required", "input": {"query": "q"}}]
    status, body, headers = errors.answer(errors.invalid_request(listed))
    assert (status, headers) == (422, [])
    assert body == b'{"detail":[{"type":"missing","loc":["body","ids"],"msg":"Field required","input":{"query":"q"}}]}'


def test_what_a_client_sent_comes_back_without_a_500():
    listed = [{"type": "int_type", "loc": ("body", "ids", 0), "msg": "m", "input": float("nan")},
              {"type": "value_error", "loc": ("body", "query"), "msg": "m", "input": "a\ud800", "big": 2**70}]
    status, body, _ = errors.answer(errors.invalid_request(listed))
    assert status == 422
    assert json.loads(body)["detail"] == [
        {"type": "int_type", "loc": ["body", "ids", 0], "msg": "m", "input": None},
        {"type": "value_error", "loc": ["body", "query"], "msg": "m", "input": "a\ud800", "big": 2**70}]


def test_a_dialect_writes_the_body_and_nothing_else():
    def message_type(error: ServiceError):
        return {"message": error.message, "type": error.kind.value}

    status, body, headers = errors.answer(ServiceError(ErrorKind.OVERLOADED, "busy"), message_type)
    assert (status, headers) == (429, [(b"retry-after", b"1")])
    assert body == b'{"message":"busy","type":"overloaded"}'


def test_openapi_lists_each_status_once_with_every_cause():
    responses = errors.openapi_responses([ErrorKind.NO_WORKER, ErrorKind.TOO_LARGE, ErrorKind.SHUTTING_DOWN])
    assert list(responses) == [413, 503]
    assert "No worker" in responses[503]["description"] and "stopping" in responses[503]["description"]


def test_the_api_dialect_has_a_message_and_a_type_for_each_client():
    status, body, _ = errors.answer(ServiceError(ErrorKind.OVERLOADED, "busy"), errors.api_body)
    assert status == 429
    assert json.loads(body) == {"message": "busy", "error": "busy", "error_type": "overloaded"}


def test_the_api_dialect_names_the_invalid_fields_in_its_message():
    listed = [{"type": "missing", "loc": ("body", "documents"), "msg": "Field required", "input": {}},
              {"type": "string_type", "loc": ("body", "query"), "msg": "Input should be a valid string", "input": 5}]
    status, body, _ = errors.answer(errors.invalid_request(listed), errors.api_body)
    got = json.loads(body)
    assert status == 422 and got["error_type"] == "invalid_request"
    assert got["message"] == got["error"] == ("invalid request: documents: Field required; "
                                              "query: Input should be a valid string")
    assert got["errors"] == [{"field": "documents", "message": "Field required", "type": "missing"},
                             {"field": "query", "message": "Input should be a valid string", "type": "string_type"}]
    assert "5" not in body.decode()  # what the client sent is not echoed


@pytest.mark.parametrize("path, dialect", [("/rerank", errors.detail_body), ("/info", errors.detail_body),
                                           ("/v2/rerank", errors.api_body), ("/v1/rerank", errors.api_body),
                                           ("/tei/rerank", errors.api_body), ("/v2", errors.api_body),
                                           ("/v2x", errors.detail_body), ("/tei", errors.api_body)])
def test_the_dialect_follows_the_path(path, dialect):
    assert errors.dialect_for(path) is dialect


@pytest.mark.parametrize("seconds, header", [(None, b"1"), (0.2, b"1"), (1.0, b"1"), (7.01, b"8"), (42.5, b"43")])
def test_retry_after_is_the_brokers_measure_in_whole_seconds(seconds, header):
    frames = p.encode(p.FAIL, b"7", p.encode_kind(ErrorKind.OVERLOADED), b"busy")
    if seconds is not None:
        frames.append(p.encode_retry_after(seconds))
    msg = p.decode(frames)
    retry = p.decode_retry_after(msg.args[3]) if len(msg.args) > 3 else None
    _, _, headers = errors.answer(ServiceError(ErrorKind.OVERLOADED, "busy", retry_after=retry))
    assert headers == [(b"retry-after", header)]


@pytest.mark.parametrize("raw", [b"soon", b"nan", b"inf", b"-1", b"\xff"])
def test_a_retry_after_that_is_not_a_number_of_seconds_is_refused(raw):
    with pytest.raises(p.ProtocolError):
        p.decode_retry_after(raw)
