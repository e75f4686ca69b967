"""Helpers for the Docker end-to-end tests: the docker CLI, one compose project, and an
HTTP client that runs inside a container on the project's network.

All traffic goes to the test's own containers: the client container joins the
network that the test created and calls http://cross_encoder:8300 there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

# Variables of the host shell that must not leak into the compose project under test
# (the compose file interpolates them); the test passes its own in an env file.
_LEAKY = ("RERANKER_", "NUM_THREADS", "WEB_CONCURRENCY", "WORKER_", "GATEWAY_", "HF_HUB_OFFLINE", "BASE_IMAGE",
          "PIP_INDEX_URL", "TORCH_INDEX_URL", "BUILD_NETWORK", "COMPOSE_", "HEALTHCHECK_INTERVAL", "DEV_PORT")


def base_image() -> str:
    """The image both Dockerfiles build FROM in the tests (and the test client runs on)."""
    return build_env().get("BASE_IMAGE", "python:3.11-slim")


def docker_unavailable() -> str | None:
    """Why the Docker tests cannot run here (one line), or None if they can: no docker CLI, no engine
    answering `docker info`, no Compose v2, or a base image that is neither here nor pullable."""
    if shutil.which("docker") is None:
        return "docker CLI not found"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=60)
        if info.returncode != 0:
            return f"`docker info` failed, no Docker engine ({_last_line(info)})"
        compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if compose.returncode != 0:
            return "the Docker Compose v2 plugin (`docker compose`) is missing"
        image = base_image()
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60).returncode != 0:
            pull = subprocess.run(["docker", "pull", "-q", image], capture_output=True, text=True, timeout=600)
            if pull.returncode != 0:
                return (f"the base image {image} is not here and cannot be pulled ({_last_line(pull)}); "
                        f"BASE_IMAGE names a local one")
    except subprocess.TimeoutExpired as exc:
        return f"`{' '.join(exc.cmd[:3])}` timed out after {exc.timeout:g} s"
    return None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]


def docker(*args: str, timeout: float = 120, check: bool = True, input: str | None = None,
           env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input,
                          env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)[:300]} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY)}
    env.update(extra)
    return env


def build_env() -> dict[str, str]:
    """Build settings: BASE_IMAGE, PIP_INDEX_URL, TORCH_INDEX_URL and BUILD_NETWORK from the shell (a
    mirror, an offline index), else CI's DOCKER_LAB_* ones; none: the Dockerfiles' defaults."""
    ci = os.environ.get
    fallback = {"BASE_IMAGE": ci("DOCKER_LAB_BASE_IMAGE"), "PIP_INDEX_URL": ci("DOCKER_LAB_INDEX_URL"),
                "TORCH_INDEX_URL": ci("DOCKER_LAB_INDEX_URL"), "BUILD_NETWORK": ci("DOCKER_LAB_BUILD_NETWORK")}
    chosen = {name: os.environ.get(name) or value for name, value in fallback.items()}
    return {name: value for name, value in chosen.items() if value}


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5,
             diagnose: Callable[[], str] | None = None):
    """Poll until condition() returns something truthy; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except (AssertionError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}\n"
                                 f"{diagnose() if diagnose else ''}")
        time.sleep(interval)


class Stack:
    """One compose project (unique name), its external network and a client container on it."""

    def __init__(self, project: str, network: str, env_file: Path, client_image: str) -> None:
        self.project = project
        self.network = network
        self.env_file = env_file
        self.client_image = client_image
        self.client = f"{project}-client"
        self.env = clean_environ(**build_env())
        self.timings: dict[str, float] = {}

    # -- compose -------------------------------------------------------------
    def compose(self, *args: str, files: tuple[str, ...] = ("docker-compose.yml",), timeout: float = 600,
                check: bool = True, **env: str) -> subprocess.CompletedProcess:
        cmd = ["compose", "-p", self.project, "--env-file", str(self.env_file)]
        for f in files:
            cmd += ["-f", f]
        return docker(*cmd, *args, timeout=timeout, check=check, env={**self.env, **env})

    def timed(self, name: str, fn: Callable[[], object]):
        started = time.monotonic()
        try:
            return fn()
        finally:
            self.timings[name] = round(time.monotonic() - started, 1)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's running containers."""
        out = docker("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}").stdout
        return out.split()

    def inspect(self, container: str) -> dict:
        return json.loads(docker("inspect", container).stdout)[0]

    def hostnames(self, service: str) -> set[str]:
        return {self.inspect(c)["Config"]["Hostname"] for c in self.containers(service)}

    def diagnose(self) -> str:
        ps = self.compose("ps", "-a", check=False, timeout=60)
        logs = self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        return f"--- compose ps\n{ps.stdout}{ps.stderr}\n--- compose logs (tail)\n{logs.stdout[-8000:]}"

    # -- the client container ------------------------------------------------
    def start_client(self) -> None:
        docker("run", "-d", "--rm", "--name", self.client, "--network", self.network,
               "--label", f"reranker-test={self.project}", "--entrypoint", "sleep", self.client_image, "infinity",
               timeout=300)

    def client_cmd(self, mode: str, *args: str, env: dict | None = None, interactive: bool = False) -> list[str]:
        cmd = ["docker", "exec"] + (["-i"] if interactive else [])
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        return cmd + [self.client, "python", "-c", CLIENT, mode, *args]

    def get(self, path: str) -> tuple[int, object]:
        out = subprocess.run(self.client_cmd("get", path), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"client failed: {out.stderr[-2000:]}")
        res = json.loads(out.stdout)
        try:
            return res["status"], json.loads(res["body"])
        except ValueError:
            return res["status"], res["body"]

    def ready(self) -> dict:
        status, body = self.get("/ready")
        return body if status in (200, 503) and isinstance(body, dict) else {}

    def wait_workers(self, n: int, timeout: float = 120, hosts: set[str] | None = None) -> dict:
        """Wait until /ready lists exactly n workers (and, if given, exactly these hostnames)."""
        def check():
            body = self.ready()
            if body.get("workers") != n:
                return None
            if hosts is not None and {w["host"] for w in body["pool"]} != hosts:
                return None
            return body
        return wait_for(check, timeout, f"/ready to list {n} workers" + (f" on {sorted(hosts)}" if hosts else ""),
                        interval=1.0, diagnose=self.diagnose)

    def post(self, requests: list[dict]) -> list[dict]:
        out = subprocess.run(self.client_cmd("post", interactive=True), input=json.dumps(requests),
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"client failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def load(self, requests: int, concurrency: int = 4, sentences: int = 6) -> dict:
        """A fixed number of requests; returns the client's summary."""
        env = {"REQUESTS": requests, "CONCURRENCY": concurrency, "SENTENCES": sentences, "MAX_SECONDS": 240}
        out = subprocess.run(self.client_cmd("load", env=env), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"client failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def background_load(self, concurrency: int = 4, sentences: int = 6, max_seconds: int = 240) -> "Load":
        """Requests until stopped (or max_seconds); bounded to `concurrency` in flight."""
        return Load(self, concurrency, sentences, max_seconds)

    # -- cleanup -------------------------------------------------------------
    def destroy(self) -> None:
        """Remove everything the test made; report (not raise) what could not be removed."""
        steps = [lambda: docker("rm", "-f", self.client, check=False, timeout=300),
                 lambda: self.compose("down", "-v", "--rmi", "all", "--remove-orphans", "-t", "10",
                                      check=False, timeout=900),
                 lambda: docker("network", "rm", self.network, check=False, timeout=120)]
        for step in steps:
            try:
                proc = step()
            except subprocess.TimeoutExpired as exc:
                print(f"cleanup timed out: {exc}")
                continue
            if proc.returncode != 0 and "No such" not in proc.stderr:
                print(f"cleanup: {' '.join(proc.args[:6])} failed: {proc.stderr[-500:]}")


class Load:
    def __init__(self, stack: Stack, concurrency: int, sentences: int, max_seconds: int) -> None:
        self.stack = stack
        self.stop_file = f"/tmp/stop-{time.monotonic_ns()}"
        env = {"CONCURRENCY": concurrency, "SENTENCES": sentences, "MAX_SECONDS": max_seconds,
               "STOP_FILE": self.stop_file}
        self.proc = subprocess.Popen(stack.client_cmd("load", env=env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def stop(self, timeout: float = 120) -> dict:
        docker("exec", self.stack.client, "touch", self.stop_file, check=False)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            raise AssertionError(f"load client failed ({self.proc.returncode}): {err[-2000:]}")
        return json.loads(out)

    def __enter__(self) -> "Load":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()


# The client, run with `python -c` inside a container on the test network (stdlib only).
#   get PATH        -> {"status", "body"}
#   post            -> stdin: a JSON list of /rerank bodies; stdout: [{"status", "body"}]
#   load            -> requests with stub-checkable answers, CONCURRENCY threads, until
#                      REQUESTS done, STOP_FILE exists or MAX_SECONDS; stdout: a summary
CLIENT = r'''
import json, os, random, re, sys, threading, time, urllib.error, urllib.request

URL = os.environ.get("URL", "http://cross_encoder:8300")
WORD = re.compile(r"\w+")


def call(method, path, body=None, timeout=90):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:
        return 0, repr(e)


def stub_score(query, sentence):
    q = set(WORD.findall(query.lower()))
    s = set(WORD.findall(sentence.lower()))
    return len(q & s) / len(q) if q else 0.0


def check(body, query, sentences, ids):
    results = json.loads(body)["results"]
    if sorted(r["id"] for r in results) != sorted(ids):
        return "ids differ"
    scores = [r["score"] for r in results]
    if scores != sorted(scores, reverse=True):
        return "not sorted"
    by_id = dict(zip(ids, sentences))
    for r in results:
        if abs(r["score"] - stub_score(query, by_id[r["id"]])) > 1e-6:
            return f"wrong score for id {r['id']}: {r['score']}"
    return None


def load():
    n_total = int(os.environ.get("REQUESTS", "0"))
    conc = int(os.environ.get("CONCURRENCY", "4"))
    n_sent = int(os.environ.get("SENTENCES", "6"))
    max_s = float(os.environ.get("MAX_SECONDS", "120"))
    stop_file = os.environ.get("STOP_FILE")
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lam", "mu"]
    lock = threading.Lock()
    st = {"sent": 0, "ok": 0, "failed": 0, "failures": [], "latencies": []}
    started = time.monotonic()

    def more():
        with lock:
            if n_total and st["sent"] >= n_total:
                return False
            if time.monotonic() - started > max_s or (stop_file and os.path.exists(stop_file)):
                return False
            st["sent"] += 1
            return True

    def run(seed):
        # Requests differ from one load to the next: repeated ones would be answered by the broker's
        # cache, and workers would get no work.
        rng = random.Random(f"{os.getpid()}-{time.time_ns()}-{seed}")
        while more():
            query = " ".join(rng.sample(words, 4))
            sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + " " + "x" * rng.randint(0, 200)
                         for _ in range(n_sent)]
            ids = rng.sample(range(10000), n_sent)
            t = time.monotonic()
            status, body = call("POST", "/rerank", {"query": query, "sentences": sentences, "ids": ids})
            dt = time.monotonic() - t
            problem = f"HTTP {status}: {body[:200]}" if status != 200 else check(body, query, sentences, ids)
            with lock:
                st["latencies"].append(dt)
                if problem:
                    st["failed"] += 1
                    if len(st["failures"]) < 20:
                        st["failures"].append(f"{time.monotonic() - started:.1f}s {problem}")
                else:
                    st["ok"] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(st.pop("latencies")) or [0.0]
    st.update(seconds=round(time.monotonic() - started, 2), p50_ms=round(1000 * lat[len(lat) // 2], 1),
              max_ms=round(1000 * lat[-1], 1))
    print(json.dumps(st))


mode = sys.argv[1]
if mode == "get":
    status, body = call("GET", sys.argv[2], timeout=10)
    print(json.dumps({"status": status, "body": body}))
elif mode == "post":
    print(json.dumps([dict(zip(("status", "body"), call("POST", "/rerank", r))) for r in json.load(sys.stdin)]))
elif mode == "load":
    load()
else:
    sys.exit(f"unknown mode {mode}")
'''
