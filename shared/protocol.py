"""The reranker's ZeroMQ protocol, in one module (after the zguide's MDP.py).

Two conversations, both DEALER (peer) to ROUTER (broker). A ROUTER prepends the
peer's identity frame on receive and strips it on send; the functions here see
only the frames after it. Every message is:

    frame 0   VERSION            b"RRK2"; a peer speaking another version is refused
    frame 1   message type       one byte, below
    frame 2.. arguments          per type, below

Gateway process (client) <-> broker frontend
    REQUEST   c->b  request_id, task      task: a Task's JSON (below), for one HTTP request
    REPLY     b->c  request_id, scores, meta   scores: little-endian float32, one per sentence;
                                          meta: JSON {"queue_ms", "compute_ms", "inference_ms",
                                          "cached"?, "tokens"?}: sentences answered from the broker's
                                          cache, tokens the workers scored for it (where they say)
    FAIL      b->c  request_id, kind, message [, retry_after]
                                          kind: an ErrorKind's ASCII name, e.g. b"overloaded";
                                          retry_after (optional): seconds, ASCII, when to try again
    CANCEL    c->b  request_id            the caller has gone: drop what is left of its work
    PING      c->b  (no arguments)        every heartbeat interval
    PONG      b->c  epoch                 epoch: random bytes the broker draws when it starts
    STATUS    c->b  request_id            asks for the pool's state
    STATUS    b->c  request_id, body      body: JSON {"workers", "idle", "queued", "running", "pool", ...}

A broker that crashes loses what it held; its supervisor starts a new one with a new epoch. A client
keeps every REQUEST it has sent and not had answered, with the epoch it last heard when it sent
it; when a PONG brings another epoch it sends those again (scoring is idempotent, and the broker
ignores a REQUEST it already holds). So a broker crash costs latency, not requests.

Worker <-> broker backend
    READY     w->b  info          JSON {"protocol", "pool", "model", "backend", "precision", "max_length",
                                  "host", "pid", ...}: checked by decode_ready_info
    REFUSE    b->w  kind, message the broker will not take this worker (another pool, another protocol,
                                  a malformed READY); the worker says why and stops
    JOB       b->w  job_id, body  body: JSON {"tasks": [task, ...]}: one or more tasks, scored
                                  together; scores come back concatenated in task order
    RESULT    w->b  job_id, scores, meta   meta: JSON {"compute_ms", "errors"?: [[task_index, kind, message]],
                                  "tokens"?: int}: a task listed in errors failed alone (its scores
                                  are NaN); tokens: how many the worker scored for the job
    ERROR     w->b  job_id, kind, message  the whole job failed
    HEARTBEAT both  (no arguments)
    DISCONNECT both (no arguments)

A task is {"query": str, "sentences": [str], "options"?: {...}, "trace"?: str}: `trace` is the
caller's request id, for log lines; `options` (ScoreOptions, defaults left out) say how to score.

Only JSON and raw float32 travel: never pickle. All functions are pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

VERSION = b"RRK2"

REQUEST = b"\x01"
REPLY = b"\x02"
FAIL = b"\x03"
STATUS = b"\x04"
CANCEL = b"\x05"
PING = b"\x06"
PONG = b"\x07"
READY = b"\x10"
JOB = b"\x11"
RESULT = b"\x12"
ERROR = b"\x13"
HEARTBEAT = b"\x14"
DISCONNECT = b"\x15"
REFUSE = b"\x16"

NAMES = {
    REQUEST: "REQUEST", REPLY: "REPLY", FAIL: "FAIL", STATUS: "STATUS", CANCEL: "CANCEL", PING: "PING",
    PONG: "PONG", READY: "READY", JOB: "JOB", RESULT: "RESULT", ERROR: "ERROR", HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT",
    REFUSE: "REFUSE",
}
# Number of argument frames after version and type; STATUS has 1 (ask) or 2 (answer).
ARITY = {
    REQUEST: (2,), REPLY: (3,), FAIL: (3, 4), STATUS: (1, 2), CANCEL: (1,), PING: (0,), PONG: (1,), READY: (1,),
    JOB: (2,),
    RESULT: (3,), ERROR: (3,), HEARTBEAT: (0,), DISCONNECT: (0,), REFUSE: (2,),
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
    TOO_LONG = "too_long"            # a text over the model's window, with truncation off
    UNSUPPORTED = "unsupported"      # an option this worker cannot honour
    WRONG_POOL = "wrong_pool"        # REFUSE: a worker of another pool, protocol or key
    # met in the gateway
    INVALID_REQUEST = "invalid_request"  # the HTTP body does not follow the request schema
    TOO_LARGE = "too_large"              # over a size limit (body, sentences, characters)
    NOT_READY = "not_ready"              # a readiness check the broker did not answer
    SHUTTING_DOWN = "shutting_down"      # the gateway process is stopping
    BODY_TIMEOUT = "body_timeout"        # the client stopped sending its request body
    UNSUPPORTED_MEDIA = "unsupported_media"  # a request body declared as something other than JSON
    UNAUTHORIZED = "unauthorized"        # no valid API key (Authorization: Bearer)
    NOT_FOUND = "not_found"              # no such HTTP route
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the route exists, not with this method
    WRONG_MODEL = "wrong_model"          # the request names a model this service does not serve


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


TRUNCATION_SIDES = ("right", "left")


@dataclass(frozen=True)
class Chunking:
    """Score a long text by its best window of the model's length instead of its head.

    `overlap`: tokens that consecutive windows share; `max_tokens`: tokens of the text considered at
    most (None: all of it)."""
    overlap: int = 64
    max_tokens: int | None = None


@dataclass(frozen=True)
class ScoreOptions:
    """How a task's pairs are scored. The defaults are CrossEncoder.predict's: the activation applied
    (sigmoid for one label), texts over the model's window truncated at their end."""
    raw: bool = False                 # logits, without the activation
    truncate: bool = True             # False: a pair over the model's window fails with TOO_LONG
    truncation_side: str = "right"    # which end of a too-long text is cut
    chunk: Chunking | None = None     # score by the best window instead of truncating


DEFAULT_OPTIONS = ScoreOptions()


@dataclass(frozen=True)
class Task:
    """A query and its sentences, scored alike: one HTTP request, or the part of one in a job."""
    query: str
    sentences: Sequence[str]
    options: ScoreOptions = DEFAULT_OPTIONS
    trace: str = ""


def encode_options(options: ScoreOptions) -> dict:
    """The options that differ from the defaults (an empty dict for the defaults)."""
    out: dict = {}
    if options.raw:
        out["raw"] = True
    if not options.truncate:
        out["truncate"] = False
    if options.truncation_side != "right":
        out["truncation_side"] = options.truncation_side
    if options.chunk is not None:
        out["chunk"] = {"overlap": options.chunk.overlap, "max_tokens": options.chunk.max_tokens}
    return out


def _is_int(value, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def decode_options(obj) -> ScoreOptions:
    if obj is None or obj == {}:
        return DEFAULT_OPTIONS
    if not isinstance(obj, dict) or set(obj) - {"raw", "truncate", "truncation_side", "chunk"}:
        raise ProtocolError(f"options must be an object of raw, truncate, truncation_side, chunk: got {obj!r}")
    raw, truncate = obj.get("raw", False), obj.get("truncate", True)
    side, chunk = obj.get("truncation_side", "right"), obj.get("chunk")
    if not isinstance(raw, bool) or not isinstance(truncate, bool) or side not in TRUNCATION_SIDES:
        raise ProtocolError(f"malformed options {obj!r}")
    if chunk is not None:
        if not (isinstance(chunk, dict) and set(chunk) <= {"overlap", "max_tokens"}
                and _is_int(chunk.get("overlap", 0), 0)
                and (chunk.get("max_tokens") is None or _is_int(chunk["max_tokens"], 1))):
            raise ProtocolError(f"malformed chunk options {chunk!r}")
        chunk = Chunking(chunk.get("overlap", Chunking.overlap), chunk.get("max_tokens"))
    return ScoreOptions(raw, truncate, side, chunk)


def _task_json(task: Task) -> dict:
    out = {"query": task.query, "sentences": list(task.sentences)}
    options = encode_options(task.options)
    if options:
        out["options"] = options
    if task.trace:
        out["trace"] = task.trace
    return out


def _task(obj, what: str) -> Task:
    if not (isinstance(obj, dict) and isinstance(obj.get("query"), str) and isinstance(obj.get("sentences"), list)
            and all(isinstance(s, str) for s in obj["sentences"]) and isinstance(obj.get("trace", ""), str)
            and set(obj) <= {"query", "sentences", "options", "trace"}):
        raise ProtocolError(f'{what} must be {{"query": str, "sentences": [str], "options"?: {{}}, "trace"?: str}}')
    return Task(obj["query"], obj["sentences"], decode_options(obj.get("options")), obj.get("trace", ""))


def encode_request_body(task: Task) -> bytes:
    return orjson.dumps(_task_json(task))


def decode_request_body(raw: bytes) -> Task:
    return _task(_json(raw, "REQUEST body"), "REQUEST body")


def encode_job_body(tasks: Sequence[Task]) -> bytes:
    return orjson.dumps({"tasks": [_task_json(t) for t in tasks]})


def decode_job_body(raw: bytes) -> list[Task]:
    body = _json(raw, "JOB body")
    if not (isinstance(body, dict) and isinstance(body.get("tasks"), list) and body["tasks"]):
        raise ProtocolError('JOB body must be {"tasks": [task, ...]} with at least one task')
    return [_task(t, "a JOB task") for t in body["tasks"]]


# READY: what a worker must say about itself, and of what type.
READY_FIELDS: dict[str, tuple[type, ...]] = {
    "protocol": (str,), "pool": (str,), "model": (str,), "backend": (str,), "precision": (str,),
    "host": (str,), "pid": (int,), "max_length": (int, type(None)),
}


def decode_ready_info(raw: bytes) -> dict:
    """A READY's info, checked: the fields every worker states, of the right types, and this protocol."""
    info = decode_json_object(raw, "READY info")
    wrong = [k for k, types in READY_FIELDS.items()
             if k not in info or not isinstance(info[k], types) or isinstance(info[k], bool)]
    if wrong:
        raise ProtocolError(f"READY info lacks or mistypes {', '.join(wrong)}")
    if info["protocol"] != VERSION.decode():
        raise ProtocolError(f"READY info claims protocol {info['protocol']!r}, not {VERSION.decode()!r}")
    return info


def encode_result_meta(compute_ms: float, errors: Sequence[tuple[int, ErrorKind, str]] = (),
                       tokens: int | None = None) -> bytes:
    meta: dict = {"compute_ms": round(compute_ms, 3)}
    if errors:
        meta["errors"] = [[i, kind.value, message] for i, kind, message in errors]
    if tokens is not None:
        meta["tokens"] = tokens
    return orjson.dumps(meta)


def decode_result_meta(raw: bytes, tasks: int) -> tuple[float, dict[int, tuple[ErrorKind, str]], int | None]:
    """(compute_ms, {task index: (kind, message)}, tokens or None) from a RESULT's meta, for a job
    of `tasks` tasks."""
    meta = decode_json_object(raw, "RESULT meta")
    compute_ms = meta.get("compute_ms")
    if not isinstance(compute_ms, (int, float)) or isinstance(compute_ms, bool) or not compute_ms >= 0:
        raise ProtocolError(f"RESULT meta has no valid compute_ms: {meta!r}")
    tokens = meta.get("tokens")
    if tokens is not None and not _is_int(tokens, 0):
        raise ProtocolError(f"RESULT meta has an invalid tokens count: {tokens!r}")
    errors: dict[int, tuple[ErrorKind, str]] = {}
    for item in meta.get("errors", []):
        if not (isinstance(item, list) and len(item) == 3 and _is_int(item[0], 0) and item[0] < tasks
                and isinstance(item[2], str)):
            raise ProtocolError(f"malformed RESULT error {item!r}")
        errors[item[0]] = (decode_kind(str(item[1]).encode()), item[2])
    return float(compute_ms), errors, tokens


def encode_json(obj) -> bytes:
    return orjson.dumps(obj)


def decode_json_object(raw: bytes, what: str) -> dict:
    body = _json(raw, what)
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return body


def encode_retry_after(seconds: float) -> bytes:
    return b"%.3f" % seconds


def decode_retry_after(raw: bytes) -> float:
    try:
        seconds = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"retry_after {raw[:20]!r} is not a number") from None
    if not 0 <= seconds < 1e9:
        raise ProtocolError(f"retry_after {seconds!r} is out of range")
    return seconds


def encode_kind(kind: ErrorKind) -> bytes:
    return kind.value.encode("ascii")


def decode_kind(raw: bytes) -> ErrorKind:
    try:
        return _KINDS[raw]
    except KeyError:
        raise ProtocolError(f"unknown error kind {raw!r}") from None
