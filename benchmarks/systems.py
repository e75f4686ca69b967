"""The systems compared, each started as its own processes and stopped afterwards.

- inprocess: CrossEncoder.predict in one process, serially (the reference; benchmarks/inprocess.py)
- original: the original single-process FastAPI app (benchmarks/original_app.py) under uvicorn
- service[:NAME]: this service end to end: `python -m gateway` + N `python -m worker`, with the
  worker settings of the spec (e.g. RERANKER_PRECISION=bf16) so that fast modes can be compared
- infinity-torch, infinity-onnx: infinity-emb (torch engine / optimum ONNX engine), own venv
- litserve: LitServe with request batching (benchmarks/peers/litserve_server.py), own venv

A system spec on the command line is NAME or NAME:VAR=VALUE,VAR=VALUE. For the service, the
variables go to the workers (and the gateway); WORKERS=n sets how many workers start. Example:
    service:RERANKER_PRECISION=bf16   service-ov:RERANKER_BACKEND=openvino,WORKERS=2,NUM_THREADS=1
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from devkit.procs import ROOT, Server, clean_env, free_port, python, wait_for

VENVS = ROOT / "benchmarks" / ".venvs"
EXPORTS = ROOT / "benchmarks" / ".exports"
"""The service's export cache (RERANKER_EXPORT_DIR) in every run: warm after the first (or after setup)."""
PEERS = {"infinity-torch": "infinity", "infinity-onnx": "infinity", "litserve": "litserve"}
KINDS = ("inprocess", "original", "service", *PEERS)


@dataclass
class SystemSpec:
    name: str                       # label in the report, e.g. "service" or "service-bf16"
    kind: str                       # one of KINDS
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "SystemSpec":
        name, _, rest = text.partition(":")
        env = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"system spec {text!r}: {item!r} is not VAR=VALUE")
            env[key.strip()] = value.strip()
        kind = next((k for k in sorted(KINDS, key=len, reverse=True) if name == k or name.startswith(k + "-")), None)
        if kind is None:
            raise ValueError(f"system {name!r}: the name must be one of {', '.join(KINDS)}, optionally followed by "
                             "-LABEL (e.g. service-bf16)")
        if env and kind not in ("service", "inprocess"):
            pass  # peers take OMP/MKL-like variables too; they are passed through
        if kind == "service" and env and name == "service":
            # an unnamed variant gets a label from its settings
            label = "-".join(v.lower() for k, v in env.items() if k in ("RERANKER_BACKEND", "RERANKER_PRECISION"))
            name = f"service-{label}" if label else name
        return cls(name, kind, env)

    def peer_venv(self) -> Path | None:
        return VENVS / PEERS[self.kind] if self.kind in PEERS else None

    def available(self) -> tuple[bool, str]:
        venv = self.peer_venv()
        if venv is None:
            return True, ""
        if not (venv / ".ready").exists():
            return False, (f"skipped: its venv {venv.relative_to(ROOT)} is absent; "
                           f"run `bash benchmarks/peers/setup.sh {PEERS[self.kind]}`")
        return True, ""

    def precision_env(self) -> dict[str, str]:
        if self.kind == "infinity-onnx":
            return {"RERANKER_BACKEND": "onnx", **self.env}
        return self.env


# What a worker logs once it has its scorer (worker/selection.py): the settings, then the mode chosen.
CHOICE_LINE = re.compile(r"RERANKER_BACKEND=(\S+) RERANKER_PRECISION=(\S+): (\S+) (\S+) \((.*)\)$", re.M)


class Running:
    """A started system: its URL, API dialect, and process groups for the monitor."""

    def __init__(self, spec: SystemSpec, url: str, api: str, servers: dict[str, list[Server]], info: dict,
                 restart: Callable[[int], Server] | None = None) -> None:
        self.spec, self.url, self.api, self.servers, self.info = spec, url, api, servers, info
        self._restart = restart

    def groups(self) -> dict[str, list[int]]:
        return {name: [s.pid for s in servers] for name, servers in self.servers.items()}

    def chosen_mode(self) -> dict | None:
        """The mode the service's first worker runs and how it was chosen, from its log."""
        workers = self.servers.get("worker") or []
        found = CHOICE_LINE.findall(workers[0].tail(200_000)) if workers else []
        if not found:
            return None
        backend, precision, mode_backend, mode_precision, why = found[-1]
        return {"requested": f"{backend}/{precision}", "backend": mode_backend, "precision": mode_precision,
                "why": why}

    def cold_start(self, timeout: float = 300) -> float:
        """Seconds from `python -m worker` to its READY (seen in /ready), with the caches this system's
        first start filled: one worker is stopped and started again."""
        workers = self.servers["worker"]
        n = len(workers)
        old = workers.pop()
        old.stop()
        wait_for(lambda: httpx.get(self.url + "/ready", timeout=2).json().get("workers") == n - 1, 30,
                 "a worker to leave")
        started = time.monotonic()
        new = self._restart(n - 1)
        workers.append(new)
        while time.monotonic() - started < timeout:
            if not new.alive():
                raise RuntimeError(f"the restarted worker exited with {new.proc.returncode}:\n{new.tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).json().get("workers") == n:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"the restarted worker was not READY after {timeout:g} s:\n{new.tail()}")

    def stop(self) -> None:
        for servers in reversed(list(self.servers.values())):
            for s in servers:
                s.stop()


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def start(spec: SystemSpec, model: Path, threads: int, logs: Path, workers: int = 1,
          timeout: float = 600) -> Running:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_threads = {"NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{spec.name}-{port}"

    if spec.kind == "original":
        env = clean_env(**env_threads, BENCH_MODEL=str(model), **spec.env)
        srv = Server("original", [python(), "-m", "uvicorn", "benchmarks.original_app:app", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-access-log"], env, logs / f"{tag}.log")
        wait_for(lambda: _http_ok(url + "/openapi.json"), timeout, "the original app", [srv])
        return Running(spec, url, "rerank", {"server": [srv]}, {"threads": threads})

    if spec.kind == "service":
        env = dict(spec.env)
        n = int(env.pop("WORKERS", workers))
        worker_threads = env.pop("NUM_THREADS", str(threads))
        wport = free_port()
        while wport == port:  # both were free a moment ago; the same one twice would put workers on HTTP
            wport = free_port()
        base = clean_env(
            HOST="127.0.0.1", PORT=str(port),
            RERANKER_WORKERS_BIND=f"tcp://127.0.0.1:{wport}", RERANKER_BROKER_URL=f"tcp://127.0.0.1:{wport}",
            RERANKER_FRONTEND=f"ipc://{logs}/frontend-{port}.ipc", RERANKER_MODEL=str(model),
            RERANKER_EXPORT_DIR=str(EXPORTS),
            RERANKER_HEALTH_FILE=str(logs / f"health-{port}.json"),
            # The service answers 504 after RERANKER_REQUEST_TIMEOUT (60 s by default); at c32 a W30 request
            # waits ~75 s on one fp32 worker here. The other systems have no such limit, so lift it.
            RERANKER_REQUEST_TIMEOUT="900",
            # The points of a run re-send the same pool of requests; the peers have no score cache, so the
            # service's is off here (`python -m benchmarks cache` measures it).
            RERANKER_CACHE_BYTES="0",
        )
        base.update(env)
        gateway = Server("gateway", [python(), "-m", "gateway"], base, logs / f"{tag}-gateway.log")
        wait_for(lambda: _http_ok(url + "/health"), 60, "the gateway", [gateway])
        wenv = {**base, "NUM_THREADS": worker_threads, "OMP_NUM_THREADS": worker_threads,
                "MKL_NUM_THREADS": worker_threads}

        def worker(i: int) -> Server:
            return Server(f"worker{i}", [python(), "-m", "worker"],
                          {**wenv, "RERANKER_HEALTH_FILE": str(logs / f"health-{port}-{i}.json")},
                          logs / f"{tag}-worker{i}.log")

        ws = [worker(i) for i in range(n)]
        running = Running(spec, url, "rerank", {"gateway": [gateway], "worker": ws},
                          {"workers": n, "threads_per_worker": int(worker_threads),
                           "web_concurrency": int(env.get("WEB_CONCURRENCY", 1))}, restart=worker)
        try:
            wait_for(lambda: httpx.get(url + "/ready", timeout=2).json().get("workers") == n, timeout,
                     f"{n} workers ready", [gateway, *ws])
            pool = httpx.get(url + "/ready", timeout=2).json().get("pool")
            running.info["pool"] = pool
        except Exception:
            running.stop()
            raise
        return running

    venv = spec.peer_venv()
    if venv is not None:
        py = str(venv / "bin" / "python")
        env = clean_env(**env_threads, **spec.env)
        env.pop("PYTHONPATH", None)
        if spec.kind == "litserve":
            srv = Server(spec.name, [py, str(ROOT / "benchmarks" / "peers" / "litserve_server.py"), str(model),
                                     "--port", str(port), "--threads", str(threads),
                                     "--max-batch-size", env.get("LITSERVE_MAX_BATCH", "8"),
                                     "--batch-timeout", env.get("LITSERVE_BATCH_TIMEOUT", "0.01")],
                         env, logs / f"{tag}.log")
            wait_for(lambda: _http_ok(url + "/health"), timeout, "litserve /health", [srv])
            return Running(spec, url, "rerank", {"server": [srv]}, {"threads": threads})
        engine = "torch" if spec.kind == "infinity-torch" else "optimum"
        model_id, cwd = str(model), ROOT
        if engine == "optimum":
            # an ONNX export of the same model, in a directory of its own (see peers/export_onnx.py)
            subprocess.run([python(), str(ROOT / "benchmarks" / "peers" / "export_onnx.py"), str(model)], check=True,
                           cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            model_id, cwd = ".", model / "infinity-onnx"
        argv = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model_id, "--served-model-name", "reranker",
                "--engine", engine, "--device", "cpu", "--port", str(port), "--host", "127.0.0.1",
                "--batch-size", env.get("INFINITY_BATCH_SIZE", "32"), "--no-bettertransformer",
                "--no-model-warmup"]
        env["INFINITY_ANONYMOUS_USAGE_STATS"] = "0"
        env["DO_NOT_TRACK"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
        # infinity caches its optimised ONNX model by provider and model id ("."): keep it per model
        env["HF_HOME"] = str(model / "infinity-onnx" / ".hf")
        env["HUGGINGFACE_HUB_CACHE"] = env["HF_HUB_CACHE"] = str(model / "infinity-onnx" / ".hf" / "hub")
        srv = Server(spec.name, argv, env, logs / f"{tag}.log", cwd=cwd)
        wait_for(lambda: _http_ok(url + "/health"), timeout, f"infinity ({engine}) /health", [srv])
        return Running(spec, url, "infinity", {"server": [srv]}, {"threads": threads, "engine": engine})

    raise ValueError(f"cannot start {spec.kind!r} as a server")


class InProcess:
    """The reference as a long-lived process (benchmarks/inprocess.py) that runs requests on demand."""

    api = "inprocess"
    url = None

    def __init__(self, spec: SystemSpec, model: Path, threads: int, seed: int, logs: Path, timeout: float = 600) -> None:
        self.spec = spec
        env = clean_env(NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        logs.mkdir(parents=True, exist_ok=True)
        self._err = open(logs / "inprocess.log", "ab")
        self.proc = subprocess.Popen([python(), "-m", "benchmarks.inprocess", str(model), "--threads", str(threads),
                                      "--seed", str(seed)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"the in-process reference exited with {self.proc.returncode}; see {self._err.name}")
        self.info = json.loads(line)

    def groups(self) -> dict[str, list[int]]:
        return {"process": [self.proc.pid]}

    def run(self, workload: str, start: int, count: int) -> list[float]:
        """Latencies in seconds of requests start..start+count-1 of the workload's pool."""
        self.proc.stdin.write(f"{workload} {start} {count}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process reference died; see {self._err.name}")
        return json.loads(line)["latencies_s"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
