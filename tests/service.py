"""Run the real service for tests: `python -m gateway` and `python -m worker` as processes.

Every Service gets its own HTTP port, worker port and ipc endpoint, so tests
can run side by side. Heartbeats are fast (0.2 s x 5) so that dead workers are
noticed in tests within a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from devkit.procs import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent

FAST = {
    # 1 s to notice a dead worker: fast, yet robust on a loaded 2-core CI machine
    "RERANKER_HEARTBEAT_INTERVAL": "0.2",
    "RERANKER_HEARTBEAT_LIVENESS": "5",
    "RERANKER_NO_WORKER_GRACE": "1.5",
    "RERANKER_REQUEST_TIMEOUT": "20",
}


class Service:
    def __init__(self, tmp: Path, **settings: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.worker_port = free_port()
        self.env = clean_env(**FAST)
        self.env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            RERANKER_WORKERS_BIND=f"tcp://127.0.0.1:{self.worker_port}",
            RERANKER_BROKER_URL=f"tcp://127.0.0.1:{self.worker_port}",
            RERANKER_FRONTEND=f"ipc://{tmp}/frontend-{self.port}.ipc",
        )
        self.env.update(settings)
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=self.url, timeout=60)

    # -- processes ---------------------------------------------------------
    def start_gateway(self, wait: bool = True) -> subprocess.Popen:
        log = open(self.tmp / f"gateway-{self.port}.log", "ab")
        self.gateway = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=self.tmp, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_for(lambda: self.get("/health").status_code == 200, what="gateway /health")
        return self.gateway

    def start_worker(self, **settings: str) -> subprocess.Popen:
        env = {**self.env, "RERANKER_BACKEND": "stub",
               "RERANKER_HEALTH_FILE": str(self.tmp / f"health-{len(self.workers)}-{self.port}.json"), **settings}
        log = open(self.tmp / f"worker-{len(self.workers)}-{self.port}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=self.tmp, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def start(self, workers: int = 0, ready_timeout: float = 30, **worker_settings: str) -> "Service":
        self.start_gateway()
        for _ in range(workers):
            self.start_worker(**worker_settings)
        if workers:
            self.wait_ready(workers, ready_timeout)
        return self

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
        if self.gateway is not None and self.gateway.poll() is None:
            os.killpg(self.gateway.pid, signal.SIGTERM)
            try:
                self.gateway.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.gateway.pid, signal.SIGKILL)
        for proc in self.workers:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.http.close()

    def logs(self, tail: int | None = None) -> str:
        """Every log of this service, whole (for asserts), or the last `tail` characters of each (for
        failure messages)."""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-(tail or 0):]}"
                         for p in sorted(self.tmp.glob(f"*{self.port}.log")))

    # -- http ------------------------------------------------------------
    def get(self, path: str, **kw) -> httpx.Response:
        try:
            return self.http.get(path, **kw)
        except httpx.TransportError as exc:
            return httpx.Response(599, text=str(exc))

    def rerank(self, query: str, sentences: list[str], ids: list[int] | None = None, **kw) -> httpx.Response:
        ids = list(range(len(sentences))) if ids is None else ids
        return self.http.post("/rerank", json={"query": query, "sentences": sentences, "ids": ids}, **kw)

    def ready(self) -> dict:
        r = self.get("/ready")
        return r.json() if r.status_code in (200, 503) and r.headers.get("content-type") == "application/json" else {}

    def wait_ready(self, workers: int, timeout: float = 30) -> dict:
        """Until /ready lists `workers` workers; fails at once, with the logs, when too few worker
        processes are left to get there (one died loading its model, say), rather than at the timeout."""
        def ready() -> bool:
            alive = sum(proc.poll() is None for proc in self.workers)
            if alive < workers:
                raise AssertionError(f"waiting for {workers} workers ready, but only {alive} worker processes "
                                     f"are running\n{self.logs(tail=3000)}")
            return self.ready().get("workers") == workers
        self.wait_for(ready, timeout, f"{workers} workers ready")
        return self.ready()

    def wait_for(self, condition, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise AssertionError(f"gateway exited with {self.gateway.returncode}\n{self.logs(tail=3000)}")
            try:
                if condition():
                    return
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs(tail=3000)}")
