"""A bounded soak: the service under a steady closed-loop load for some minutes, with stub workers.

    .venv/bin/python -m benchmarks soak --minutes 5

It stops by itself after `--minutes` and reports the throughput, the errors by kind, and the
resident memory of the gateway processes (gunicorn and its uvicorn workers), the broker and the
workers, sampled through the run: what grew between the start of the load and its end is what a
long-running service would keep growing. Stub workers (a fixed cost per pair, RERANKER_STUB_DELAY_MS)
keep the model out of it: the soak is of the gateway, the broker and the worker loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

from devkit.procs import rss_bytes, spawned, tree

from . import loadgen
from .stub_bench import StubService
from .suite import RESULTS
from .workloads import make_requests


class MemoryTimeline:
    """RSS of each group of processes every `interval` seconds, in a thread."""

    def __init__(self, groups: dict[str, list[int]], interval: float) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[dict] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        row = {"t_s": round(time.monotonic() - self._t0, 1)}
        for name, roots in self.groups.items():
            row[name] = round(sum(rss_bytes(pid) for pid in tree(roots)) / 2**20, 1)
        self.samples.append(row)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemoryTimeline":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run(out: Path, minutes: float, workers: int = 2, concurrency: int = 8, delay_ms: float = 2.0,
        workload: str = "W30", web_concurrency: int = 1) -> dict:
    seconds = minutes * 60
    svc = StubService(out / "logs", web_concurrency=web_concurrency, delay_ms=delay_ms)
    try:
        svc.add_workers(workers)
        broker = spawned(svc.gateway.pid)
        gateway = [pid for pid in tree([svc.gateway.pid]) if pid not in tree(broker)]
        groups = {"gateway": gateway, "broker": broker, "workers": [w.pid for w in svc.workers]}
        requests = make_requests(workload, 256, seed=7)
        loadgen.closed_loop(svc.url, "rerank", requests, concurrency, total=concurrency * 4)  # warm up
        with MemoryTimeline(groups, interval=max(1.0, seconds / 30)) as memory:
            samples = loadgen.closed_loop(svc.url, "rerank", requests, concurrency, total=0,
                                          min_seconds=seconds, max_seconds=seconds, timeout=120)
    finally:
        svc.stop()
    start, end = memory.samples[0], memory.samples[-1]
    return {
        "config": {"minutes": minutes, "workers": workers, "concurrency": concurrency, "stub_delay_ms": delay_ms,
                   "workload": workload, "web_concurrency": web_concurrency},
        "load": loadgen.summarize(samples),
        "errors": dict(Counter(s.error.split(":")[0] + ": " + s.error.split(":", 1)[-1][:80]
                               for s in samples if not s.ok)),
        "rss_mb": {name: {"start": start[name], "end": end[name], "growth": round(end[name] - start[name], 1),
                          "peak": max(row[name] for row in memory.samples)} for name in groups},
        "timeline": memory.samples,
    }


def markdown(result: dict) -> str:
    load, cfg = result["load"], result["config"]
    lines = [f"Soak: {cfg['minutes']:g} min of {cfg['workload']} at concurrency {cfg['concurrency']}, "
             f"{cfg['workers']} stub workers ({cfg['stub_delay_ms']:g} ms a pair)", "",
             f"- requests: {load['requests']} ok, {load['errors']} errors; {load.get('requests_per_s')} requests/s, "
             f"{load.get('pairs_per_s')} pairs/s; p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms"]
    for error, count in result["errors"].items():
        lines.append(f"  - {count} x {error}")
    lines += ["", "| RSS (MB) | start | end | growth | peak |", "|---|---|---|---|---|"]
    for name, rss in result["rss_mb"].items():
        lines.append(f"| {name} | {rss['start']} | {rss['end']} | {rss['growth']:+} | {rss['peak']} |")
    return "\n".join(lines)


def cmd_soak(args) -> int:
    out = Path(args.out) if args.out else RESULTS / ("soak-" + time.strftime("%Y%m%d-%H%M%S"))
    result = run(out, args.minutes, args.workers, args.concurrency, args.delay_ms, args.workload,
                 args.web_concurrency)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nwritten to {out / 'soak.json'}")
    return 0 if result["load"]["errors"] == 0 else 1
