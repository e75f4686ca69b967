"""GET /metrics: Prometheus text, from prometheus_client.

Two sources, added up at each scrape:

- the gateway processes' own counters and histograms (HTTP requests by route and status, latency,
  queue wait, scoring time, pairs and tokens scored). Gunicorn runs several gateway processes and a
  scrape reaches one of them, so they are kept in prometheus_client's multiprocess mode: every
  process writes its values to files in one directory, and the process that answers the scrape adds
  them up (MultiProcessCollector). The directory is RERANKER_METRICS_DIR/<pid of the gunicorn
  master>: new for every run of the gateway, so nothing of an earlier run is counted; directories of
  runs whose master is gone are removed.
- the broker's state and counters (workers ready and busy, queue depth, re-dispatches, worker deaths,
  per-worker jobs), read from its STATUS at scrape time: the broker is a process of its own, and its
  STATUS already holds them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from shared.settings import Settings

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: from a small request on an idle pool to a big one waiting behind others.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The broker's STATUS counters, by their key there: (metric name, help). Any other number it adds is
# exported as reranker_broker_<key>_total.
BROKER_COUNTERS = {
    "requests": ("reranker_broker_requests", "Requests the broker accepted."),
    "pairs": ("reranker_broker_pairs", "Pairs in the requests the broker accepted."),
    "failed": ("reranker_broker_failed", "Requests the broker failed (timeout, overload, no worker, worker errors)."),
    "redispatched": ("reranker_redispatched", "Pieces of work re-dispatched after their worker died."),
    "purged": ("reranker_worker_deaths", "Workers taken for dead (silent past the heartbeat liveness)."),
    "cancelled": ("reranker_cancelled", "Requests whose caller left before the answer."),
}
BROKER_GAUGES = {"workers", "idle", "queued", "running", "pool"}


def run_directory(base: str | Path, master: int) -> Path:
    """`base`/`master`, made; the directories of runs whose master is gone are removed."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.name.isdigit() and int(old.name) != master and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    run = base / str(master)
    run.mkdir(exist_ok=True)
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GatewayMetrics:
    """This gateway process's metrics, and the scrape's answer. Make one per process, after the fork."""

    def __init__(self, settings: Settings, master: int | None = None) -> None:
        self.directory = run_directory(settings.metrics_dir, os.getppid() if master is None else master)
        # prometheus_client reads its directory from the environment, and chooses how values are kept
        # when it is imported (which the gunicorn master may have done before this): say both here.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory)
        values.ValueClass = values.MultiProcessValue()
        self.requests = Counter("reranker_http_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=None)
        self.request_seconds = Histogram("reranker_request_duration_seconds",
                                         "Time from a request's arrival to its answer, by route.", ["route"],
                                         buckets=BUCKETS, registry=None)
        self.queue_seconds = Histogram("reranker_queue_duration_seconds",
                                       "Time a scored request waited in the broker before its first job.",
                                       buckets=BUCKETS, registry=None)
        self.scoring_seconds = Histogram("reranker_scoring_duration_seconds",
                                         "Time from a request's first job to its last score.",
                                         buckets=BUCKETS, registry=None)
        self.pairs = Counter("reranker_pairs_scored", "Query-text pairs scored, by route.", ["route"], registry=None)
        self.tokens = Counter("reranker_tokens_scored", "Tokens scored, by route, where the workers report them.",
                              ["route"], registry=None)
        # the labelled children, looked up once each: labels() costs as much as the increment (measured)
        self._answered: dict[tuple[str, int], tuple] = {}
        self._pairs: dict[str, object] = {}

    def answered(self, route: str, status: int, seconds: float) -> None:
        children = self._answered.get((route, status))
        if children is None:
            children = self._answered[route, status] = (self.requests.labels(route, str(status)),
                                                        self.request_seconds.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def scored(self, route: str, pairs: int, meta: dict) -> None:
        """A request scored: its size, and the timings of the broker's REPLY."""
        counter = self._pairs.get(route)
        if counter is None:
            counter = self._pairs[route] = self.pairs.labels(route)
        counter.inc(pairs)
        # Each observation is two writes to this process's file (about 2 us each): the workers' inference
        # time per request (x-inference-time) is left out of the histograms for that.
        for histogram, key in ((self.queue_seconds, "queue_ms"), (self.scoring_seconds, "compute_ms")):
            if isinstance(meta.get(key), (int, float)):
                histogram.observe(meta[key] / 1000)
        if isinstance(meta.get("tokens"), int):
            self.tokens.labels(route).inc(meta["tokens"])

    def render(self, status: dict | None) -> bytes:
        """The scrape: every gateway process's metrics, and the broker's from its STATUS (None: the
        broker did not answer)."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        registry.register(BrokerCollector(status))
        return generate_latest(registry)


class BrokerCollector:
    """The broker's STATUS as metrics."""

    def __init__(self, status: dict | None) -> None:
        self.status = status

    def collect(self):
        status = self.status
        up = GaugeMetricFamily("reranker_broker_up", "1 if the broker answered this scrape's STATUS.")
        up.add_metric([], 0 if status is None else 1)
        yield up
        if status is None:
            return
        pool = status.get("pool", [])
        busy = sum(1 for w in pool if w.get("busy"))
        for name, help_text, value in (
                ("reranker_workers_ready", "Workers connected and ready.", status.get("workers", len(pool))),
                ("reranker_workers_busy", "Workers scoring a job now.", busy),
                ("reranker_workers_idle", "Workers waiting for work.", status.get("idle", 0)),
                ("reranker_queue_pairs", "Pairs queued in the broker, not yet sent to a worker.",
                 status.get("queued", 0)),
                ("reranker_requests_in_flight", "Requests queued or being scored.", status.get("running", 0))):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge
        for key, value in status.items():
            if key in BROKER_GAUGES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, help_text = BROKER_COUNTERS.get(key, (f"reranker_broker_{key}", f"The broker's {key} count."))
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        labels = ["host", "pid", "model", "backend", "precision"]
        info = GaugeMetricFamily("reranker_worker_info", "A connected worker (always 1), with its model and mode.",
                                 labels=labels)
        jobs = CounterMetricFamily("reranker_worker_jobs", "Jobs a worker finished.", labels=["host", "pid"])
        pairs = CounterMetricFamily("reranker_worker_pairs", "Pairs a worker scored.", labels=["host", "pid"])
        worker_busy = GaugeMetricFamily("reranker_worker_busy", "1 while a worker scores a job.",
                                        labels=["host", "pid"])
        for w in pool:
            who = [str(w.get("host")), str(w.get("pid"))]
            info.add_metric(who + [str(w.get(k)) for k in labels[2:]], 1)
            jobs.add_metric(who, w.get("jobs", 0))
            pairs.add_metric(who, w.get("pairs", 0))
            worker_busy.add_metric(who, 1 if w.get("busy") else 0)
        yield from (info, jobs, pairs, worker_busy)
