"""A closed-loop HTTP load generator (asyncio + httpx) for the compute-bound comparisons.

`concurrency` clients each send a request, wait for its answer, and send the next, until
`requests` requests have been sent (and at least `min_seconds` have passed, at most
`max_seconds`). It is bounded in count and time and stops by itself. For the gateway overhead
test, where the client must not be the bottleneck, `wrk` is used instead (gateway_bench.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from .workloads import RerankRequest


@dataclass
class Sample:
    start: float
    end: float
    pairs: int
    ok: bool
    error: str = ""


# Request adapters: (request) -> (path, json body), and a check of the answer -> number of scores.
def rerank_api(req: RerankRequest):
    return "/rerank", req.body()


def rerank_check(req: RerankRequest, data) -> None:
    results = data["results"]
    if len(results) != req.pairs or sorted(r["id"] for r in results) != list(range(req.pairs)):
        raise ValueError(f"expected {req.pairs} results with ids 0..{req.pairs - 1}")
    scores = [r["score"] for r in results]
    if scores != sorted(scores, reverse=True):
        raise ValueError("results are not sorted by score")


def infinity_api(req: RerankRequest):
    return "/rerank", {"query": req.query, "documents": req.sentences, "return_documents": False,
                       "model": "reranker"}


def infinity_check(req: RerankRequest, data) -> None:
    if len(data["results"]) != req.pairs:
        raise ValueError(f"expected {req.pairs} results, got {len(data['results'])}")


APIS: dict[str, tuple[Callable, Callable]] = {
    "rerank": (rerank_api, rerank_check),
    "infinity": (infinity_api, infinity_check),
}


async def _closed_loop(base_url: str, api: str, requests: list[RerankRequest], concurrency: int, total: int,
                       min_seconds: float, max_seconds: float, timeout: float) -> list[Sample]:
    make, check = APIS[api]
    samples: list[Sample] = []
    sent = 0
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def more() -> bool:
        elapsed = time.perf_counter() - t0
        return elapsed < max_seconds and (sent < total or elapsed < min_seconds)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        async def one_client() -> None:
            nonlocal sent
            while more():
                req = requests[sent % len(requests)]
                sent += 1
                path, body = make(req)
                start = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    r.raise_for_status()
                    check(req, r.json())
                    samples.append(Sample(start, time.perf_counter(), req.pairs, True))
                except Exception as exc:  # noqa: BLE001 - counted as an error, with its text
                    samples.append(Sample(start, time.perf_counter(), req.pairs, False, f"{type(exc).__name__}: {exc}"[:300]))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return samples


def closed_loop(base_url: str, api: str, requests: list[RerankRequest], concurrency: int, total: int,
                min_seconds: float = 0.0, max_seconds: float = 600.0, timeout: float = 900.0) -> list[Sample]:
    return asyncio.run(_closed_loop(base_url, api, requests, concurrency, total, min_seconds, max_seconds, timeout))


def send_one(base_url: str, api: str, req: RerankRequest, timeout: float = 900.0) -> float:
    """One request; its latency in seconds (raises on errors)."""
    make, check = APIS[api]
    path, body = make(req)
    t = time.perf_counter()
    r = httpx.post(base_url + path, json=body, timeout=timeout)
    r.raise_for_status()
    check(req, r.json())
    return time.perf_counter() - t


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(samples: list[Sample]) -> dict:
    ok = [s for s in samples if s.ok]
    lat = [(s.end - s.start) * 1000 for s in ok]
    out = {"requests": len(ok), "errors": len(samples) - len(ok)}
    if samples:
        wall = max(s.end for s in samples) - min(s.start for s in samples)
        out["wall_s"] = round(wall, 3)
        out["pairs_per_s"] = round(sum(s.pairs for s in ok) / wall, 2) if wall > 0 else None
        out["requests_per_s"] = round(len(ok) / wall, 3) if wall > 0 else None
    for q in (50, 90, 99):
        value = percentile(lat, q)
        out[f"p{q}_ms"] = round(value, 1) if value is not None else None
    out["mean_ms"] = round(sum(lat) / len(lat), 1) if lat else None
    errors = sorted({s.error for s in samples if not s.ok})
    if errors:
        out["error_examples"] = errors[:3]
    return out
