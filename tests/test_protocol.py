import numpy as np
import pytest

from shared import protocol as p


def test_request_round_trip():
    frames = p.encode(p.REQUEST, b"7", p.encode_request_body("q", ["a", "b é"]))
    assert all(isinstance(f, bytes) for f in frames)
    msg = p.decode(frames)
    assert msg.kind == p.REQUEST and msg.name == "REQUEST"
    assert msg.args[0] == b"7"
    assert p.decode_request_body(msg.args[1]) == ("q", ["a", "b é"])


def test_scores_round_trip_exactly():
    scores = np.array([0.1, 1e-7, 0.99999994, 0.0], dtype=np.float32)
    out = p.decode_scores(p.encode_scores(scores), expected=4)
    assert out.dtype == np.float32 and np.array_equal(out, scores)
    assert p.encode_scores(scores.astype(np.float64)) == p.encode_scores(scores)


def test_job_body_round_trip():
    tasks = [("q1", ["a", "b"]), ("q2", ["c"])]
    assert p.decode_job_body(p.encode_job_body(tasks)) == [("q1", ["a", "b"]), ("q2", ["c"])]


@pytest.mark.parametrize("frames, error", [
    ([b"RRK1"], "at least 2 frames"),
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


@pytest.mark.parametrize("raw", [b"[]", b"{}", b'[["q"]]', b'[["q", "s"]]', b'[["q", [1]]]', b"\x80"])
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
