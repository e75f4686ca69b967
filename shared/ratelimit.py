"""Log lines about what peers send, at a bounded rate.

A peer that sends malformed messages as fast as it can must not fill the disk: each kind of
message (its format string) is logged as it comes for the first `burst` times in a `window` of
seconds; the rest of that window are counted and reported in one line when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Window:
    level: int
    ends: float
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, window: float = 5.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self.burst = burst
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()  # for loggers shared by threads (the loops themselves are one thread each)

    def warning(self, msg: str, *args) -> None:
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args) -> None:
        self.log(logging.INFO, msg, *args)

    def log(self, level: int, msg: str, *args) -> None:
        now = self.clock()
        with self._lock:
            window = self._windows.get(msg)
            ended = window if window is not None and now >= window.ends else None
            if window is None or ended is not None:
                window = self._windows[msg] = _Window(level, now + self.window)
            logged = window.logged < self.burst
            window.logged += logged
            window.suppressed += not logged
        if ended is not None:
            self._report(msg, ended)
        if logged:
            self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Report the windows that have ended; call now and then (each heartbeat), so that a count
        is not held back until the next message of its kind."""
        now = self.clock()
        with self._lock:
            ended = [(m, self._windows.pop(m)) for m, w in list(self._windows.items()) if now >= w.ends]
        for msg, window in ended:
            self._report(msg, window)

    def _report(self, msg: str, window: _Window) -> None:
        if window.suppressed:
            self.logger.log(window.level, "... and %d more like %r in %g s", window.suppressed, msg, self.window)
