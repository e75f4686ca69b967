"""shared.ratelimit: lines about peers, at most a burst a window, the rest as one count."""

from __future__ import annotations

import logging

from shared.ratelimit import RateLimitedLog


def make(caplog, **kw):
    clock = [0.0]
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), clock=lambda: clock[0], **kw)
    caplog.set_level(logging.INFO, logger="test.ratelimit")
    return limiter, clock


def test_a_flood_is_a_burst_then_one_count_per_window(caplog):
    limiter, clock = make(caplog, window=5.0, burst=3)
    for i in range(100_000):
        limiter.warning("bad message from %s", i)
    assert [r.getMessage() for r in caplog.records] == [f"bad message from {i}" for i in range(3)]
    clock[0] = 5.0
    limiter.flush()
    assert caplog.records[-1].getMessage() == "... and 99997 more like 'bad message from %s' in 5 s"
    assert caplog.records[-1].levelno == logging.WARNING and len(caplog.records) == 4


def test_kinds_are_counted_apart_and_a_new_window_logs_again(caplog):
    limiter, clock = make(caplog, window=1.0, burst=1)
    for _ in range(3):
        limiter.warning("a %d", 1)
        limiter.info("b %d", 2)
    clock[0] = 1.5
    limiter.warning("a %d", 3)  # the next window: reports the last one's count, then logs
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["a 1", "b 2", "... and 2 more like 'a %d' in 1 s", "a 3"]
    limiter.flush()
    assert caplog.records[-1].getMessage() == "... and 2 more like 'b %d' in 1 s"


def test_nothing_suppressed_nothing_reported(caplog):
    limiter, clock = make(caplog, window=1.0, burst=5)
    limiter.warning("once")
    clock[0] = 2.0
    limiter.flush()
    assert [r.getMessage() for r in caplog.records] == ["once"]
