"""Service benchmarks with stub workers (RERANKER_BACKEND=stub: no model compute).

- gateway_overhead: W30 requests/s and p99 at concurrency 32 through gateway + broker + stub
  workers with no delay, driven by `wrk` (C, epoll; a Lua script sets the POST body) so that the
  load generator is not the bottleneck; wrk's own CPU is reported (from its rusage).
- scaling: stub workers with a fixed cost per pair (RERANKER_STUB_DELAY_MS, a sleep, so that
  eight workers fit on two cores): throughput vs N = 1..8 workers under a closed-loop W30 load,
  and the latency of one W240 request over k idle workers; then stub workers whose cost follows
  the text's length (RERANKER_STUB_CHAR_DELAY_US, as a model's does) and one mixed-length W240
  request (one sentence in four of 300 words, the others of 10) over k idle workers.

The stub service runs without the broker's score cache unless told otherwise: these workloads
repeat their requests, and a cache would answer them instead of the workers.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from devkit.models import sample_text
from devkit.procs import Monitor, Server, clean_env, free_port, python, wait_for
from gateway.scheduler import PAIR_CHARS

from . import loadgen
from .workloads import QUERY_WORDS, RerankRequest, make_requests


class StubService:
    """The gateway and stub workers, added one at a time."""

    def __init__(self, logs: Path, web_concurrency: int = 1, delay_ms: float = 0.0, **env: str) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        wport = free_port()
        while wport == self.port:  # the same free port twice would put workers on HTTP
            wport = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(
            HOST="127.0.0.1", PORT=str(self.port), WEB_CONCURRENCY=str(web_concurrency),
            RERANKER_WORKERS_BIND=f"tcp://127.0.0.1:{wport}", RERANKER_BROKER_URL=f"tcp://127.0.0.1:{wport}",
            RERANKER_FRONTEND=f"ipc://{logs}/frontend-{self.port}.ipc", RERANKER_BACKEND="stub",
            RERANKER_STUB_DELAY_MS=f"{delay_ms:g}", **{"RERANKER_CACHE_BYTES": "0", **env})
        self.gateway = Server("gateway", [python(), "-m", "gateway"], self.env, logs / f"stub-{self.port}-gateway.log")
        self.workers: list[Server] = []
        try:
            wait_for(lambda: httpx.get(self.url + "/health", timeout=2).status_code == 200, 60, "the gateway",
                     [self.gateway])
        except Exception:
            self.stop()
            raise

    def add_workers(self, n: int) -> None:
        for _ in range(n):
            i = len(self.workers)
            self.workers.append(Server(f"worker{i}", [python(), "-m", "worker"],
                                       {**self.env, "RERANKER_HEALTH_FILE": str(self.logs / f"h-{self.port}-{i}.json")},
                                       self.logs / f"stub-{self.port}-worker{i}.log"))
        want = len(self.workers)
        wait_for(lambda: httpx.get(self.url + "/ready", timeout=2).json().get("workers") == want, 60,
                 f"{want} stub workers", [self.gateway, *self.workers])

    def groups(self) -> dict[str, list[int]]:
        return {"gateway": [self.gateway.pid], "worker": [w.pid for w in self.workers]}

    def stop(self) -> None:
        for w in self.workers:
            w.stop(5)
        self.gateway.stop()


# -- gateway overhead (wrk) -------------------------------------------------------------------

LUA = """-- POST the same W30 body on every request (written by benchmarks/stub_bench.py)
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    res["requests"] = int(m.group(1)) if m else None
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = round(_ms(m.group(1)), 2) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


def find_wrk(install: bool = False) -> str | None:
    path = shutil.which("wrk")
    if path is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = shutil.which("wrk")
    return path


def run_wrk(wrk: str, url: str, lua: Path, connections: int, seconds: float, threads: int = 1) -> dict:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua),
            url + "/rerank"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    res = parse_wrk(out)
    res["loadgen_cpu_cores"] = round((usage.ru_utime + usage.ru_stime) / wall, 3)
    res["loadgen"] = f"wrk -t{threads} -c{connections}"
    if proc.returncode != 0 or res["requests_per_s"] is None:
        res["error"] = out[-500:]
    return res


def profile_summary(raw: Path, top: int = 30) -> dict:
    """Self and inclusive shares of the hottest frames in a py-spy raw (collapsed) profile."""
    import collections

    total, own, incl = 0, collections.Counter(), collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop line numbers
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    share = lambda c: [[f, round(v / total, 3)] for f, v in c.most_common(top)] if total else []  # noqa: E731
    return {"samples": total, "self": share(own), "inclusive": share(incl)}


def _profilers(svc: "StubService", out: Path, seconds: float) -> list[tuple[str, subprocess.Popen, Path]]:
    """py-spy on every gateway process but the gunicorn master (uvicorn workers, broker) and the workers."""
    spy = shutil.which("py-spy") or str(Path(python()).with_name("py-spy"))
    if not Path(spy).exists():
        return []
    from devkit.procs import tree

    procs = []
    targets = [("gateway" if "gateway" in Path(f"/proc/{p}/cmdline").read_text(errors="replace") else "broker", p)
               for p in tree([svc.gateway.pid]) if p != svc.gateway.pid]
    targets += [("worker", w.pid) for w in svc.workers]
    for role, pid in targets:
        if "resource_tracker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            continue
        raw = out / f"profile-{role}-{pid}.txt"
        procs.append((f"{role}-{pid}", subprocess.Popen(
            [spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "100", "-f", "raw", "-o", str(raw),
             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw))
    return procs


def gateway_overhead(logs: Path, web_concurrencies=(1, 2), workers: int = 2, connections: int = 32,
                     seconds: float = 10.0, install_wrk: bool = False, profile: bool = False,
                     cache_bytes: int = 0) -> dict:
    """`cache_bytes`: the broker's score cache; with one, every request but the first (the same
    body each time) is answered from it, and the workers see none."""
    wrk = find_wrk(install_wrk)
    if wrk is None:
        return {"skipped": "wrk not found (apt-get install -y wrk, or run with --install-wrk)"}
    req = make_requests("W30", 1, seed=99)[0]
    body = logs / "w30-body.json"
    logs.mkdir(parents=True, exist_ok=True)
    body.write_text(json.dumps(req.body()))
    lua = logs / "w30.lua"
    lua.write_text(LUA.format(body=body))
    runs = []
    for wc in web_concurrencies:
        svc = StubService(logs, web_concurrency=wc, RERANKER_CACHE_BYTES=str(cache_bytes))
        try:
            svc.add_workers(workers)
            loadgen.send_one(svc.url, "rerank", req)
            run_wrk(wrk, svc.url, lua, connections, 1)  # warm-up: connections, code paths
            with Monitor(svc.groups()) as mon:
                res = run_wrk(wrk, svc.url, lua, connections, seconds)
            res.update(web_concurrency=wc, stub_workers=workers, connections=connections, seconds=seconds,
                       **mon.summary())
            runs.append(res)
            if profile:  # a second, profiled run (py-spy slows what it samples: its numbers are not the result)
                spies = _profilers(svc, logs, seconds)
                if not spies:
                    res["profile"] = {"skipped": "py-spy not found (pip install py-spy)"}
                else:
                    profiled = run_wrk(wrk, svc.url, lua, connections, seconds)
                    res["profile"] = {"requests_per_s_while_profiled": profiled["requests_per_s"]}
                    for name, proc, raw in spies:
                        proc.wait(seconds + 30)
                        if raw.is_file():
                            res["profile"][name] = {"raw": str(raw), **profile_summary(raw)}
        finally:
            svc.stop()
    return {"workload": "W30", "pairs": req.pairs, "cache_bytes": cache_bytes, "runs": runs}


# -- scaling ---------------------------------------------------------------------------------

def scaling(logs: Path, max_workers: int = 8, counts: list[int] | None = None, delay_ms: float = 10.0,
            seconds: float = 6.0, w240_repeats: int = 3) -> dict:
    """Throughput vs workers, and one W240 request over k idle workers, in one growing pool; then
    one mixed-length W240 request over k idle workers, in another (mixed_w240)."""
    counts = sorted(set(counts or range(1, max_workers + 1)))
    w30 = make_requests("W30", 64, seed=7)
    w240 = make_requests("W240", w240_repeats, seed=8)
    svc = StubService(logs, delay_ms=delay_ms)
    points = []
    try:
        for n in counts:
            lat = one_at_a_time(svc, n, w240)
            # closed loop, enough requests in flight to keep n workers busy
            conc = 4 * n
            loadgen.closed_loop(svc.url, "rerank", w30, conc, conc, max_seconds=2)  # warm-up
            samples = loadgen.closed_loop(svc.url, "rerank", w30, conc, 10 ** 9, min_seconds=seconds,
                                          max_seconds=seconds)
            s = loadgen.summarize(samples)
            points.append({"workers": n, "concurrency": conc, "pairs_per_s": s.get("pairs_per_s"),
                           "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "errors": s["errors"],
                           "w240_ms": round(statistics.median(lat) * 1000, 1),
                           "w240_all_ms": [round(x * 1000, 1) for x in lat]})
    finally:
        svc.stop()
    base = points[0]
    one = base["pairs_per_s"] / base["workers"] if base["pairs_per_s"] else None
    t1 = base["w240_ms"] * base["workers"]
    for p in points:
        p["speedup"] = round(p["pairs_per_s"] / one, 2) if one and p["pairs_per_s"] else None
        p["speedup_per_worker"] = round(p["speedup"] / p["workers"], 3) if p["speedup"] else None
        p["w240_vs_ideal"] = round(p["w240_ms"] / (t1 / p["workers"]), 3)  # target <= 1.25
    ideal = 1000.0 / delay_ms
    return {"delay_ms_per_pair": delay_ms, "ideal_pairs_per_s_per_worker": ideal,
            "one_worker_pairs_per_s": base["pairs_per_s"] if base["workers"] == 1 else None, "points": points,
            "mixed": mixed_w240(logs, counts, char_us=5.0 * delay_ms, repeats=w240_repeats)}


def one_at_a_time(svc: "StubService", n: int, requests: list[RerankRequest]) -> list[float]:
    """The latencies of `requests` sent one at a time, over `svc`'s workers grown to `n` idle ones."""
    svc.add_workers(n - len(svc.workers))
    time.sleep(0.2)
    return [loadgen.send_one(svc.url, "rerank", r) for r in requests]


# -- mixed lengths -----------------------------------------------------------------------------

MIXED_WORDS = (10, 300)  # a sentence's words: one in four long


def mixed_requests(count: int, seed: int = 0, pairs: int = 240) -> list[RerankRequest]:
    """Requests of `pairs` sentences, one in four of 300 words and the others of 10, at random."""
    out = []
    for i in range(count):
        rng = random.Random(f"mixed/{seed}/{i}")
        query = sample_text(rng, rng.randint(*QUERY_WORDS))
        out.append(RerankRequest(query, [sample_text(rng, MIXED_WORDS[rng.random() < 0.25]) for _ in range(pairs)]))
    return out


def mixed_w240(logs: Path, counts: list[int], char_us: float = 50.0, repeats: int = 3) -> dict:
    """One mixed-length W240 request at a time over k idle stub workers whose time follows the text's
    length: `char_us` per character of a pair and a pair's own few characters' worth (the broker's
    PAIR_CHARS), as a model's time follows its tokens (50 us a character is still some ten times
    faster than a base-size cross-encoder on two CPU threads). Each k's median latency against the
    one-worker time t1 over k (target <= 1.1)."""
    requests = mixed_requests(repeats, seed=9)
    svc = StubService(logs, delay_ms=PAIR_CHARS * char_us / 1000, RERANKER_STUB_CHAR_DELAY_US=f"{char_us:g}")
    points = []
    try:
        for n in counts:
            lat = one_at_a_time(svc, n, requests)
            points.append({"workers": n, "w240_ms": round(statistics.median(lat) * 1000, 1),
                           "w240_all_ms": [round(x * 1000, 1) for x in lat]})
    finally:
        svc.stop()
    t1 = points[0]["w240_ms"] * points[0]["workers"]
    for p in points:
        p["w240_vs_ideal"] = round(p["w240_ms"] / (t1 / p["workers"]), 3)
    chars = [sum(len(r.query) + len(s) for s in r.sentences) for r in requests]
    return {"char_delay_us": char_us, "pair_delay_ms": PAIR_CHARS * char_us / 1000,
            "long_share": 0.25, "words": list(MIXED_WORDS), "chars_per_request": round(statistics.mean(chars)),
            "points": points}


def mixed_table(s: dict) -> str:
    m = (s or {}).get("mixed")
    if not m:
        return ""
    lines = [f"Mixed lengths: one W240 request (one sentence in four of {m['words'][1]} words, the others of "
             f"{m['words'][0]}) over N idle stub workers at {m['char_delay_us']:g} us per character and "
             f"{m['pair_delay_ms']:g} ms per pair (target: W240 time <= 1.1 x t1/N):", "",
             "| workers | W240 ms | W240 / (t1/N) |", "|---|---|---|"]
    for p in m["points"]:
        lines.append(f"| {p['workers']} | {p['w240_ms']:.0f} | {p['w240_vs_ideal']:.2f} |")
    return "\n".join(lines)
