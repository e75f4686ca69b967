"""`python -m worker`: load the scorer, warm it up, connect to the broker, serve until SIGTERM or Ctrl-C.

Exit codes: 0 when stopped (SIGTERM or Ctrl-C, also while the model loads), 2 for a malformed setting,
3 when the model cannot be loaded, 4 when the broker refuses the worker (another pool or protocol); the
last line says why and what to do.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from shared import curve
from shared.logs import setup_logging
from shared.settings import Settings, load_or_exit

from . import health, hub
from .loop import WorkerLoop
from .runtime import ScorerError
from .scorer import load_scorer
from .selection import check_fits

log = logging.getLogger("reranker.worker")

WARMUP = [("what is a reranker?", "A reranker orders candidate passages by relevance to a query.")] * 4


def main() -> None:
    settings = load_or_exit(service="worker")
    curve.check_keys_or_exit(settings, "worker")
    setup_logging(settings, "worker")
    # Until the loop takes them over, SIGTERM stops the start as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(settings)
    except KeyboardInterrupt:
        log.info("worker %d stopped while starting", os.getpid())
    except ScorerError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


def serve(settings: Settings) -> None:
    health.clear(settings.health_file)  # a file from an earlier run is no news of this one
    started = time.monotonic()
    what = ("the stub scorer (" if settings.backend == "stub"
            else f"model {settings.model!r} ({settings.backend} {settings.precision}, ")
    log.info("worker %d: loading %sNUM_THREADS=%d)", os.getpid(), what, settings.num_threads)
    if settings.backend != "stub":
        check_fits(settings)
        hub.prepare(settings.model)
    scorer = load_scorer(settings)
    scorer.score(WARMUP)
    log.info("scorer %s loaded and warmed up in %.1f s", scorer.info, time.monotonic() - started)
    worker = WorkerLoop(settings, scorer)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    log.info("worker %d: health file %s (python -m worker.health)", os.getpid(), settings.health_file)
    try:
        worker.run()
    finally:
        health.clear(settings.health_file)
    if worker.refused is not None:
        print(f"worker: the broker at {settings.broker_url} refused this worker: {worker.refused}", file=sys.stderr)
        raise SystemExit(4)
    log.info("worker %d left after %d jobs", os.getpid(), worker.jobs_done)


if __name__ == "__main__":
    main()
