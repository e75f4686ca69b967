"""The reranker's ZeroMQ protocol, in one module (after the zguide's MDP.py).

Two conversations, both DEALER (peer) to ROUTER (broker). A ROUTER prepends the
peer's identity frame on receive and strips it on send; the functions here see
only the frames after it. Every message is:

    frame 0   VERSION            b"RRK1"; a peer speaking another version is refused
    frame 1   message type       one byte, below
    frame 2.. arguments          per type, below

Gateway process (client) <-> broker frontend
    REQUEST   c->b  request_id, body      body: orjson {"query": str, "sentences": [str]}
    REPLY     b->c  request_id, scores    scores: little-endian float32, one per sentence
    FAIL      b->c  request_id, kind, message     kind: an ErrorKind's ASCII name, e.g. b"overloaded"
    STATUS    c->b  request_id            asks for the pool's state
    STATUS    b->c  request_id, body      body: orjson {"workers", "idle", "queued", "running"}

Worker <-> broker backend
    READY     w->b  info          orjson {"model", "backend", "precision", "pid", ...}
    JOB       b->w  job_id, body  body: orjson [[query, [sentence, ...]], ...]: one or more
                                  tasks, scored together; scores come back concatenated
    RESULT    w->b  job_id, scores
    ERROR     w->b  job_id, message
    HEARTBEAT both  (no arguments)
    DISCONNECT both (no arguments)

Only JSON and raw float32 travel: never pickle. All functions are pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

VERSION = b"RRK1"

REQUEST = b"\x01"
REPLY = b"\x02"
FAIL = b"\x03"
STATUS = b"\x04"
READY = b"\x10"
JOB = b"\x11"
RESULT = b"\x12"
ERROR = b"\x13"
HEARTBEAT = b"\x14"
DISCONNECT = b"\x15"

NAMES = {
    REQUEST: "REQUEST", REPLY: "REPLY", FAIL: "FAIL", STATUS: "STATUS", READY: "READY", JOB: "JOB",
    RESULT: "RESULT", ERROR: "ERROR", HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT",
}
# Number of argument frames after version and type; STATUS has 1 (ask) or 2 (answer).
ARITY = {
    REQUEST: (2,), REPLY: (2,), FAIL: (3,), STATUS: (1, 2), READY: (1,), JOB: (2,),
    RESULT: (2,), ERROR: (2,), HEARTBEAT: (0,), DISCONNECT: (0,),
}
SCORE_DTYPE = np.dtype("<f4")


class ErrorKind(enum.Enum):
    """What went wrong with a request. The broker sends the first group in FAIL (the gateway meets
    TIMEOUT and BAD_REPLY on its own side too); only the gateway meets the second. Kinds, not HTTP
    statuses: gateway/errors.py maps each to its HTTP answer."""

    # sent by the broker
    OVERLOADED = "overloaded"        # too many requests in flight
    NO_WORKER = "no_worker"          # no worker connected within the grace period
    WORKERS_LOST = "workers_lost"    # workers died while scoring it, more often than the retries allow
    TIMEOUT = "timeout"              # not answered within the request timeout
    WORKER_FAILED = "worker_failed"  # the worker's scorer raised
    BAD_REPLY = "bad_reply"          # an answer that does not fit the question (a worker's or the broker's)
    BAD_REQUEST = "bad_request"      # a REQUEST the broker could not read
    # met in the gateway
    INVALID_REQUEST = "invalid_request"  # the HTTP body does not follow the request schema
    TOO_LARGE = "too_large"              # over a size limit (body, sentences, characters)
    NOT_READY = "not_ready"              # a readiness check the broker did not answer
    SHUTTING_DOWN = "shutting_down"      # the gateway process is stopping


_KINDS = {kind.value.encode("ascii"): kind for kind in ErrorKind}


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


@dataclass(frozen=True)
class Message:
    kind: bytes
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return NAMES[self.kind]


def encode(kind: bytes, *args: bytes) -> list[bytes]:
    return [VERSION, kind, *args]


def decode(frames: Sequence[bytes]) -> Message:
    """Check the envelope of a message (version, type, arity)."""
    if len(frames) < 2:
        raise ProtocolError(f"expected at least 2 frames, got {len(frames)}")
    version, kind = bytes(frames[0]), bytes(frames[1])
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r} is not {VERSION!r}")
    if kind not in ARITY:
        raise ProtocolError(f"unknown message type {kind!r}")
    args = tuple(bytes(f) for f in frames[2:])
    if len(args) not in ARITY[kind]:
        raise ProtocolError(f"{NAMES[kind]} takes {' or '.join(map(str, ARITY[kind]))} argument frames, got {len(args)}")
    return Message(kind, args)


# -- payloads ---------------------------------------------------------------

def encode_scores(scores: np.ndarray) -> bytes:
    return np.ascontiguousarray(scores, dtype=SCORE_DTYPE).tobytes()


def decode_scores(raw: bytes, expected: int | None = None) -> np.ndarray:
    if len(raw) % SCORE_DTYPE.itemsize:
        raise ProtocolError(f"scores frame of {len(raw)} bytes is not a whole number of float32")
    scores = np.frombuffer(raw, dtype=SCORE_DTYPE)
    if expected is not None and scores.shape[0] != expected:
        raise ProtocolError(f"expected {expected} scores, got {scores.shape[0]}")
    return scores


def _json(raw: bytes, what: str):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def _is_task(task) -> bool:
    return (isinstance(task, list) and len(task) == 2 and isinstance(task[0], str)
            and isinstance(task[1], list) and all(isinstance(s, str) for s in task[1]))


def encode_request_body(query: str, sentences: Sequence[str]) -> bytes:
    return orjson.dumps({"query": query, "sentences": list(sentences)})


def decode_request_body(raw: bytes) -> tuple[str, list[str]]:
    body = _json(raw, "REQUEST body")
    if not (isinstance(body, dict) and _is_task([body.get("query"), body.get("sentences")])):
        raise ProtocolError("REQUEST body must be {\"query\": str, \"sentences\": [str]}")
    return body["query"], body["sentences"]


Task = tuple[str, Sequence[str]]


def encode_job_body(tasks: Sequence[Task]) -> bytes:
    return orjson.dumps([[q, list(s)] for q, s in tasks])


def decode_job_body(raw: bytes) -> list[tuple[str, list[str]]]:
    body = _json(raw, "JOB body")
    if not (isinstance(body, list) and body and all(_is_task(t) for t in body)):
        raise ProtocolError("JOB body must be a non-empty list of [query, [sentence, ...]]")
    return [(q, s) for q, s in body]


def encode_json(obj) -> bytes:
    return orjson.dumps(obj)


def decode_json_object(raw: bytes, what: str) -> dict:
    body = _json(raw, what)
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return body


def encode_kind(kind: ErrorKind) -> bytes:
    return kind.value.encode("ascii")


def decode_kind(raw: bytes) -> ErrorKind:
    try:
        return _KINDS[raw]
    except KeyError:
        raise ProtocolError(f"unknown error kind {raw!r}") from None
