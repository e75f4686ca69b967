"""GET /metrics, read from real Prometheus text after real requests: counts added up over two gateway
processes, the broker's and the workers' state, and a worker's death."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import run_directory

ROOT = Path(__file__).resolve().parent.parent
QUERY = "red apple"
DOCS = ["a red apple", "car", "apple", "red"]


def scrape(svc) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, over a new connection (so that either process may answer)."""
    r = httpx.get(svc.url + "/metrics", headers={"Connection": "close"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def one_process(counters: Path, tmp: Path) -> dict:
    """The samples of one gateway process's counter file."""
    alone = tmp / f"alone-{counters.stem}"
    alone.mkdir()
    shutil.copy(counters, alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_over_gateway_processes_and_show_the_pool(service_factory, tmp_path):
    svc = service_factory(WEB_CONCURRENCY="2", RERANKER_METRICS_DIR=str(tmp_path / "metrics")).start(workers=2)
    before = scrape(svc)
    n = 24
    for i in range(n):  # a connection each: both gateway processes answer some
        r = httpx.post(svc.url + "/rerank", json={"query": QUERY, "sentences": DOCS, "ids": [1, 2, 3, 4]},
                       headers={"Connection": "close"})
        assert r.status_code == 200
    for _ in range(3):
        assert httpx.post(svc.url + "/v2/rerank", json={"query": QUERY, "documents": DOCS[:2]},
                          headers={"Connection": "close"}).status_code == 200
        assert httpx.post(svc.url + "/v2/rerank", json={"documents": []},
                          headers={"Connection": "close"}).status_code == 422
    # each process keeps its own file: both answered some of the requests
    files = sorted((tmp_path / "metrics" / str(svc.gateway.pid)).glob("counter_*.db"))
    assert len(files) == 2
    assert all(one_process(f, tmp_path)["reranker_http_requests_total", (("route", "/rerank"), ("status", "200"))]
               > 0 for f in files)
    scrapes = [scrape(svc) for _ in range(6)]
    for samples in scrapes:  # whichever process answers, the same totals
        assert value(samples, "reranker_http_requests_total", route="/rerank", status="200") \
            - value(before, "reranker_http_requests_total", route="/rerank", status="200") == n
        assert value(samples, "reranker_http_requests_total", route="/v2/rerank", status="200") == 3
        assert value(samples, "reranker_http_requests_total", route="/v2/rerank", status="422") == 3
        assert value(samples, "reranker_pairs_scored_total", route="/rerank") == 4 * n
        assert value(samples, "reranker_pairs_scored_total", route="/v2/rerank") == 2 * 3
        assert value(samples, "reranker_queue_duration_seconds_count") == n + 3
        assert value(samples, "reranker_scoring_duration_seconds_count") == n + 3
        assert value(samples, "reranker_request_duration_seconds_count", route="/rerank") >= n
        assert value(samples, "reranker_scoring_duration_seconds_bucket", le="+Inf") == n + 3
        assert value(samples, "reranker_broker_up") == 1
        assert value(samples, "reranker_workers_ready") == 2
        assert value(samples, "reranker_workers_busy") == 0
        assert value(samples, "reranker_queue_pairs") == 0
        assert value(samples, "reranker_broker_requests_total") == n + 3
        assert value(samples, "reranker_broker_pairs_total") == 4 * n + 6
    workers = {labels for (name, labels) in scrapes[-1] if name == "reranker_worker_info"}
    assert len(workers) == 2 and all(dict(w)["model"] == "stub" and dict(w)["backend"] == "stub" for w in workers)
    # the same pairs again and again: the workers scored them once, the broker's cache answered the rest
    scored = sum(v for (name, _), v in scrapes[-1].items() if name == "reranker_worker_pairs_total")
    assert scored == value(scrapes[-1], "reranker_broker_cache_misses_total") >= 4
    assert scored + value(scrapes[-1], "reranker_broker_cache_hits_total") == 4 * n + 6

    # the dashboard reads only what a scrape has (tokens: once the workers report them in their results)
    dashboard = (ROOT / "deploy" / "grafana" / "reranker-dashboard.json").read_text()
    wanted = set(re.findall(r"reranker_[a-z_]+", dashboard)) - {"reranker_tokens_scored_total"}
    assert wanted - {name for name, _ in scrapes[-1]} == set()
    json.loads(dashboard)

    svc.workers[0].kill()  # a death: noticed when its heartbeats stop
    svc.wait_ready(1)
    after = scrape(svc)
    assert value(after, "reranker_worker_deaths_total") == 1
    assert value(after, "reranker_workers_ready") == 1


def test_with_no_worker_the_metrics_say_so(service_factory):
    svc = service_factory()
    svc.start_gateway()
    samples = scrape(svc)
    assert value(samples, "reranker_broker_up") == 1 and value(samples, "reranker_workers_ready") == 0


def test_runs_get_their_own_directory_and_dead_runs_are_removed(tmp_path):
    (tmp_path / "999999999").mkdir()  # a run whose master is gone
    (tmp_path / "999999999" / "counter_1.db").write_bytes(b"x")
    (tmp_path / "1").mkdir()  # pid 1 is alive
    run = run_directory(tmp_path, 12345)
    assert run == tmp_path / "12345" and run.is_dir()
    assert not (tmp_path / "999999999").exists() and (tmp_path / "1").exists()
