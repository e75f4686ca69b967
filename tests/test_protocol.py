import numpy as np
import pytest

from shared import protocol as p


def test_request_round_trip():
    frames = p.encode(p.REQUEST, b"7", p.encode_request_body(p.Task("q", ["a", "b é"])))
    assert all(isinstance(f, bytes) for f in frames)
    msg = p.decode(frames)
    assert msg.kind == p.REQUEST and msg.name == "REQUEST"
    assert msg.args[0] == b"7"
    assert p.decode_request_body(msg.args[1]) == p.Task("q", ["a", "b é"])


def test_scores_round_trip_exactly():
    scores = np.array([0.1, 1e-7, 0.99999994, 0.0], dtype=np.float32)
    out = p.decode_scores(p.encode_scores(scores), expected=4)
    assert out.dtype == np.float32 and np.array_equal(out, scores)
    assert p.encode_scores(scores.astype(np.float64)) == p.encode_scores(scores)


def test_job_body_round_trip():
    tasks = [p.Task("q1", ["a", "b"]), p.Task("q2", ["c"], p.ScoreOptions(raw=True), "req-9")]
    assert p.decode_job_body(p.encode_job_body(tasks)) == tasks


@pytest.mark.parametrize("frames, error", [
    ([b"RRK2"], "at least 2 frames"),
    ([b"RRK1", p.HEARTBEAT], "version"),
    ([b"RRK0", p.HEARTBEAT], "version"),
    ([p.VERSION, b"\x7f"], "unknown message type"),
    ([p.VERSION, p.HEARTBEAT, b"extra"], "HEARTBEAT takes 0"),
    ([p.VERSION, p.REQUEST, b"1"], "REQUEST takes 2"),
    ([p.VERSION, p.FAIL, b"1", b"503"], "FAIL takes 3"),
])
def test_malformed_envelopes_are_refused(frames, error):
    with pytest.raises(p.ProtocolError, match=error):
        p.decode(frames)


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"query": "q"}', b'{"query": 1, "sentences": []}',
    b'{"query": "q", "sentences": [1]}', b'{"query": "q", "sentences": "abc"}',
])
def test_malformed_request_bodies_are_refused(raw):
    with pytest.raises(p.ProtocolError):
        p.decode_request_body(raw)


@pytest.mark.parametrize("raw", [b"[]", b"{}", b'{"tasks": []}', b'[["q", ["s"]]]', b'{"tasks": [{"query": "q"}]}',
                                 b'{"tasks": [{"query": "q", "sentences": [1]}]}', b"\x80",
                                 b'{"tasks": [{"query": "q", "sentences": [], "extra": 1}]}'])
def test_malformed_job_bodies_are_refused(raw):
    with pytest.raises(p.ProtocolError):
        p.decode_job_body(raw)


def test_scores_of_wrong_size_are_refused():
    with pytest.raises(p.ProtocolError, match="whole number"):
        p.decode_scores(b"\x00" * 5)
    with pytest.raises(p.ProtocolError, match="expected 3"):
        p.decode_scores(b"\x00" * 8, expected=3)


def test_json_objects_only():
    assert p.decode_json_object(p.encode_json({"a": 1}), "x") == {"a": 1}
    with pytest.raises(p.ProtocolError, match="READY info must be a JSON object"):
        p.decode_json_object(b"[1]", "READY info")


def test_no_pickle_on_the_wire():
    import inspect
    assert "pickle" not in inspect.getsource(p).replace("never pickle", "")


@pytest.mark.parametrize("options", [
    p.ScoreOptions(), p.ScoreOptions(raw=True), p.ScoreOptions(truncate=False),
    p.ScoreOptions(truncation_side="left"), p.ScoreOptions(chunk=p.Chunking()),
    p.ScoreOptions(raw=True, truncate=False, truncation_side="left", chunk=p.Chunking(overlap=0, max_tokens=4096)),
])
def test_options_round_trip_and_defaults_stay_off_the_wire(options):
    task = p.Task("q", ["s"], options)
    body = p.encode_request_body(task)
    assert p.decode_request_body(body) == task
    assert (b"options" in body) == (options != p.DEFAULT_OPTIONS)


@pytest.mark.parametrize("options", [
    [], {"raw": 1}, {"truncate": "no"}, {"truncation_side": "middle"}, {"colour": "red"},
    {"chunk": {"overlap": -1}}, {"chunk": {"max_tokens": 0}}, {"chunk": {"overlap": True}}, {"chunk": 5},
])
def test_malformed_options_are_refused(options):
    with pytest.raises(p.ProtocolError):
        p.decode_request_body(p.encode_json({"query": "q", "sentences": [], "options": options}))


READY = {"protocol": "RRK2", "pool": "p", "model": "m", "backend": "torch", "precision": "fp32",
         "host": "h", "pid": 1, "max_length": 512}


def test_ready_info_is_checked():
    assert p.decode_ready_info(p.encode_json({**READY, "threads": 2}))["threads"] == 2
    assert p.decode_ready_info(p.encode_json({**READY, "max_length": None}))["max_length"] is None
    for broken, error in [({**READY, "protocol": "RRK1"}, "claims protocol"), ({**READY, "pid": "1"}, "pid"),
                          ({k: v for k, v in READY.items() if k != "pool"}, "pool"), ({**READY, "pid": True}, "pid")]:
        with pytest.raises(p.ProtocolError, match=error):
            p.decode_ready_info(p.encode_json(broken))


def test_result_meta_round_trips_and_is_checked():
    raw = p.encode_result_meta(12.5, [(1, p.ErrorKind.TOO_LONG, "too long")])
    assert p.decode_result_meta(raw, tasks=2) == (12.5, {1: (p.ErrorKind.TOO_LONG, "too long")}, None)
    assert p.decode_result_meta(p.encode_result_meta(3.0), tasks=1) == (3.0, {}, None)
    assert p.decode_result_meta(p.encode_result_meta(3.0, tokens=1234), tasks=1) == (3.0, {}, 1234)
    assert p.decode_result_meta(b'{"compute_ms": 1, "tokens": 0}', tasks=1) == (1.0, {}, 0)
    for broken in [b"{}", b'{"compute_ms": -1}', b'{"compute_ms": 1, "errors": [[5, "too_long", "x"]]}',
                   b'{"compute_ms": 1, "errors": [[0, "martian", "x"]]}', b'{"compute_ms": true}',
                   b'{"compute_ms": 1, "tokens": -1}', b'{"compute_ms": 1, "tokens": 1.5}',
                   b'{"compute_ms": 1, "tokens": true}', b'{"compute_ms": 1, "tokens": "12"}']:
        with pytest.raises(p.ProtocolError):
            p.decode_result_meta(broken, tasks=2)
