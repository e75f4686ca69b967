"""The broker's score cache on a search session's pattern: the same query re-ranked over overlapping
candidate lists, as paging and refinement do.

    .venv/bin/python -m benchmarks cache --overlap 0.8              # stub workers, 20 ms a pair
    .venv/bin/python -m benchmarks cache --overlap 0.8 --pool 60    # candidates from a first stage's 60
    .venv/bin/python -m benchmarks cache --model DIR --workers 1    # a real model (torch fp32)
    .venv/bin/python -m benchmarks cache --micro                    # the broker's own cost per W30 request
    .venv/bin/python -m benchmarks cache --gateway --seconds 10     # W30 req/s, cache off and on (wrk)

A session is one query and `--lists` candidate lists of `--size` sentences; each list keeps
`--overlap` of the previous list's candidates and takes the rest anew: candidates the session has not
ranked yet or, with `--pool N`, any of the session's N first-stage candidates not in the previous
list (paging back and forth over one retrieval's result). The same sessions run twice, `--concurrency`
at a time, on the service with its cache off (RERANKER_CACHE_BYTES=0) and on. Reported: pairs/s of
each and their ratio; the share of pairs the cache answered and the ratio it bounds (pairs asked
over pairs the workers scored: what a cache that cost nothing would give); and whether every answer
of the cached run is byte for byte the uncached run's.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from devkit.models import sample_text
from devkit.procs import loadavg
from gateway.cache import ScoreCache
from gateway.scheduler import Scheduler, SendJob
from shared.protocol import Task

from . import systems
from .stub_bench import StubService, gateway_overhead
from .suite import RESULTS, say
from .workloads import QUERY_WORDS, SENTENCE_WORDS, RerankRequest, make_requests

CACHE_BYTES = 64 * 1024 * 1024


def make_sessions(count: int, lists: int, size: int, overlap: float, pool: int = 0,
                  seed: int = 0) -> list[list[RerankRequest]]:
    """`count` sessions of `lists` requests each (seeded): every list keeps round(overlap x size) of
    the previous list's candidates, the others are new to the session (pool 0) or drawn from its
    `pool` first-stage candidates."""
    keep = round(overlap * size)
    if pool and pool < 2 * size - keep:
        raise ValueError(f"a pool of {pool} candidates cannot give lists of {size} that share only {keep}")
    out = []
    for i in range(count):
        rng = random.Random(f"session/{seed}/{i}")
        query = sample_text(rng, rng.randint(*QUERY_WORDS))
        fresh = (lambda: sample_text(rng, rng.randint(*SENTENCE_WORDS)))
        candidates = [fresh() for _ in range(pool)]
        current = candidates[:size] if pool else [fresh() for _ in range(size)]
        session = [RerankRequest(query, current)]
        for _ in range(lists - 1):
            kept = rng.sample(current, keep)
            if pool:
                others = [c for c in candidates if c not in set(current)]
                new = rng.sample(others, size - keep)
            else:
                new = [fresh() for _ in range(size - keep)]
            current = kept + new
            rng.shuffle(current)
            session.append(RerankRequest(query, current))
        out.append(session)
    return out


async def _drive(url: str, sessions: list[list[RerankRequest]], concurrency: int,
                 timeout: float) -> tuple[dict[tuple[int, int], bytes], float]:
    """Every session's requests in order, `concurrency` sessions at a time: the answers' bodies by
    (session, list), and the wall time."""
    bodies: dict[tuple[int, int], bytes] = {}
    todo = iter(range(len(sessions)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def client_loop() -> None:
            for i in todo:
                for j, req in enumerate(sessions[i]):
                    r = await client.post("/rerank", json=req.body())
                    r.raise_for_status()
                    bodies[i, j] = r.content

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return bodies, time.perf_counter() - t0


def _scored(url: str) -> int:
    """Pairs the pool's workers have scored so far."""
    return sum(w.get("pairs", 0) for w in httpx.get(url + "/ready", timeout=10).json().get("pool", []))


class _Service:
    """The service to measure: stub workers, or real ones on `model`; with the cache or without."""

    def __init__(self, logs: Path, cache_bytes: int, workers: int, delay_ms: float, model: Path | None,
                 threads: int) -> None:
        if model is None:
            self._svc = StubService(logs, delay_ms=delay_ms, RERANKER_CACHE_BYTES=str(cache_bytes))
            self._svc.add_workers(workers)
            self.url, self.stop = self._svc.url, self._svc.stop
        else:
            spec = systems.SystemSpec("service", "service", {"RERANKER_CACHE_BYTES": str(cache_bytes)})
            running = systems.start(spec, model, threads, logs, workers=workers)
            self.url, self.stop = running.url, running.stop


def compare(logs: Path, sessions: list[list[RerankRequest]], concurrency: int = 4, workers: int = 2,
            delay_ms: float = 20.0, model: Path | None = None, threads: int = 1, timeout: float = 900) -> dict:
    """The same sessions on the service without the cache and with it."""
    runs, bodies = {}, {}
    asked = sum(r.pairs for s in sessions for r in s)
    for label, cache_bytes in (("uncached", 0), ("cached", CACHE_BYTES)):
        say(f"cache: {len(sessions)} sessions {label}")
        svc = _Service(logs, cache_bytes, workers, delay_ms, model, threads)
        try:
            warm = make_requests("W30", 1, seed=4242)[0]  # code paths, connections: not part of the sessions
            httpx.post(svc.url + "/rerank", json=warm.body(), timeout=timeout).raise_for_status()
            before = _scored(svc.url)
            bodies[label], wall = asyncio.run(_drive(svc.url, sessions, concurrency, timeout))
            scored = _scored(svc.url) - before
        finally:
            svc.stop()
        runs[label] = {"wall_s": round(wall, 3), "pairs_per_s": round(asked / wall, 2),
                       "requests_per_s": round(len(bodies[label]) / wall, 2), "pairs_scored": scored}
    same = sum(bodies["cached"][k] == bodies["uncached"][k] for k in bodies["uncached"])
    cached = runs["cached"]
    return {
        "pairs_asked": asked, "requests": len(bodies["uncached"]), **runs,
        "ratio": round(cached["pairs_per_s"] / runs["uncached"]["pairs_per_s"], 2),
        "cache_share": round(1 - cached["pairs_scored"] / asked, 3),
        "ratio_bound": round(asked / max(cached["pairs_scored"], 1), 2),
        "identical_answers": same, "max_abs_score_delta": _max_delta(bodies["uncached"], bodies["cached"]),
    }


def _max_delta(a: dict, b: dict) -> float:
    """The largest difference between the two runs' scores of the same id."""
    worst = 0.0
    for key, body in a.items():
        if body != b[key]:
            x = {r["id"]: r["score"] for r in orjson.loads(body)["results"]}
            y = {r["id"]: r["score"] for r in orjson.loads(b[key])["results"]}
            worst = max(worst, max(abs(x[i] - y[i]) for i in x))
    return worst


# -- the broker's own cost --------------------------------------------------------------------

def micro(requests: int = 3000, batches: int = 30) -> dict:
    """Scheduler.submit + dispatch + job_done per W30 request, in this process (no sockets): without
    the cache, with it and no pair seen before, with every pair seen before, and on the session
    pattern at 80% overlap. Median and best of `batches` batches, in microseconds."""
    distinct = make_requests("W30", requests, seed=3)
    sessions = [r for s in make_sessions(requests // 10, 10, 30, 0.8, seed=3) for r in s]
    cases = {"cache off": (None, distinct), "cache on, every pair new": (CACHE_BYTES, distinct),
             "cache on, every pair seen": (CACHE_BYTES, distinct[:64]),
             "cache on, sessions at 80% overlap": (CACHE_BYTES, sessions)}
    out = {}
    for name, (cache_bytes, pool) in cases.items():
        times = []
        s = Scheduler(heartbeat_expiry=1e9, request_timeout=1e9, no_worker_grace=2.0, max_batch_pairs=64,
                      max_retries=2, max_queued=256, min_split_pairs=16, max_queued_pairs=16384, job_floor=10.0,
                      cache=ScoreCache(cache_bytes) if cache_bytes else None)
        s.worker_ready(b"w", {"model": "m", "backend": "stub", "precision": "none", "max_length": None}, now=0)
        per_batch = requests // batches
        n = 0
        for _ in range(batches):
            t0 = time.perf_counter()
            for _ in range(per_batch):
                req = pool[n % len(pool)]
                n += 1
                s.submit(b"c", b"%d" % n, Task(req.query, req.sentences), now=n)
                for action in s.drain():
                    if isinstance(action, SendJob):
                        pairs = sum(len(t.sentences) for t in action.tasks)
                        s.job_done(b"w", action.job_id, np.zeros(pairs, np.float32), now=n + 0.5, compute_ms=1.0)
                        s.drain()
            times.append((time.perf_counter() - t0) / per_batch * 1e6)
        out[name] = {"median_us": round(statistics.median(times), 1), "best_us": round(min(times), 1),
                     "hits": s.status()["cache_hits"], "misses": s.status()["cache_misses"]}
    return out


# -- the command ------------------------------------------------------------------------------

def cmd_cache(args) -> int:
    out = Path(args.out) if args.out else RESULTS / ("cache-" + time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"loadavg_before": loadavg()}
    if args.micro:
        res["micro"] = micro()
        for name, m in res["micro"].items():
            print(f"{name}: {m['median_us']:.1f} us per W30 request (best {m['best_us']:.1f}; "
                  f"{m['hits']} hits, {m['misses']} misses)")
    if args.gateway:
        res["gateway"] = {}
        for label, cache_bytes in (("cache off", 0), ("cache on", CACHE_BYTES)):
            g = gateway_overhead(out / "logs", web_concurrencies=[1], seconds=args.seconds, cache_bytes=cache_bytes)
            res["gateway"][label] = g
            run = (g.get("runs") or [{}])[0]
            print(f"gateway, W30, {label}: {run.get('requests_per_s')} requests/s, p99 {run.get('p99_ms')} ms "
                  f"({g.get('skipped', 'wrk -c32, 2 stub workers, one gateway process')})")
    if not (args.micro or args.gateway):
        model = Path(args.model).resolve() if args.model else None
        sessions = make_sessions(args.sessions, args.lists, args.size, args.overlap, args.pool, args.seed)
        c = compare(out / "logs", sessions, args.concurrency, args.workers, args.delay_ms, model, args.threads)
        c["config"] = {k: getattr(args, k) for k in ("overlap", "pool", "sessions", "lists", "size", "concurrency",
                                                     "workers", "delay_ms", "model", "threads", "seed")}
        res["sessions"] = c
        workers = f"real workers ({args.model})" if args.model else f"stub workers at {args.delay_ms:g} ms a pair"
        print(f"{args.sessions} sessions of {args.lists} lists of {args.size}, {args.overlap:.0%} overlap"
              f"{f', pool {args.pool}' if args.pool else ''}, {args.concurrency} at a time, {args.workers} {workers}:")
        print(f"  uncached {c['uncached']['pairs_per_s']} pairs/s, cached {c['cached']['pairs_per_s']} pairs/s: "
              f"{c['ratio']}x (the cache answered {c['cache_share']:.1%} of the pairs: at most "
              f"{c['ratio_bound']}x)")
        print(f"  answers identical byte for byte: {c['identical_answers']} of {c['requests']} "
              f"(largest score difference {c['max_abs_score_delta']:g})")
    res["loadavg_after"] = loadavg()
    print(f"load average {res['loadavg_before']} before, {res['loadavg_after']} after")
    (out / "cache.json").write_text(json.dumps(res, indent=2))
    print(f"full results: {out / 'cache.json'}")
    return 0

