"""`python -m worker`: load the scorer, warm it up, connect to the broker, serve until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from shared.logs import setup_logging
from shared.settings import load_or_exit

from .loop import WorkerLoop
from .runtime import ScorerError
from .scorer import load_scorer

log = logging.getLogger("reranker.worker")

WARMUP = [("what is a reranker?", "A reranker orders candidate passages by relevance to a query.")] * 4


def main() -> None:
    settings = load_or_exit(service="worker")
    setup_logging(settings, "worker")
    started = time.monotonic()
    try:
        scorer = load_scorer(settings)
    except ScorerError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    scorer.score(WARMUP)
    log.info("scorer %s loaded and warmed up in %.1f s", scorer.info, time.monotonic() - started)
    worker = WorkerLoop(settings, scorer)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
    if worker.refused is not None:
        print(f"worker: the broker at {settings.broker_url} refused this worker: {worker.refused}", file=sys.stderr)
        raise SystemExit(4)
    log.info("worker %d left after %d jobs", os.getpid(), worker.jobs_done)


if __name__ == "__main__":
    main()
