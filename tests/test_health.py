"""`python -m worker.health`: each worker process has its own health file, and the check names the
worker (pid and file) it reports on, so it never passes off another worker's state as this one's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from devkit.procs import clean_env
from worker import health


def test_check_reads_one_workers_file(tmp_path):
    path = tmp_path / "w.json"
    now = 1000.0
    path.write_text(json.dumps({"state": "idle", "time": now - 1, "broker_seen": now - 1, "pid": 42}))
    assert health.check(str(path), limit=3, now=now) == (True, f"worker 42 idle ({path})")
    assert health.check(str(path), limit=3, now=now + 5)[0] is False
    path.write_text(json.dumps({"state": "idle", "time": now, "broker_seen": now - 10, "pid": 42}))
    ok, line = health.check(str(path), limit=3, now=now)
    assert not ok and "not connected" in line and str(path) in line


def test_live_workers_passes_over_files_of_workers_that_are_gone(tmp_path):
    alive = tmp_path / "reranker-worker-1.json"
    alive.write_text(json.dumps({"pid": os.getpid()}))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / f"reranker-worker-{gone.pid}.json").write_text(json.dumps({"pid": gone.pid}))
    (tmp_path / "reranker-worker-x.json").write_text("half a fi")
    assert health.live_workers(str(tmp_path)) == [str(alive)]


def run_health(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.health", *argv], cwd=tmp_path,
                          env=clean_env(TMPDIR=str(tmp_path), **FAST), capture_output=True, text=True, timeout=60)


FAST = {"RERANKER_HEARTBEAT_INTERVAL": "0.2", "RERANKER_HEARTBEAT_LIVENESS": "5"}


def test_two_workers_on_a_host_each_have_their_own_file(tmp_path, service_factory):
    svc = service_factory(TMPDIR=str(tmp_path))
    svc.start_gateway()
    # Without RERANKER_HEALTH_FILE: the default, one file per worker process in $TMPDIR.
    workers = [svc.start_worker(RERANKER_HEALTH_FILE="") for _ in range(2)]
    svc.wait_ready(2)
    pids = sorted(w.pid for w in workers)
    files = [str(tmp_path / f"reranker-worker-{pid}.json") for pid in pids]
    svc.wait_for(lambda: all(os.path.exists(f) for f in files), what="both health files")

    both = run_health(tmp_path)
    assert both.returncode == 0, both.stdout
    assert sorted(both.stdout.splitlines()) == sorted(f"worker {pid} idle ({f})" for pid, f in zip(pids, files))
    one = run_health(tmp_path, "--health-file", files[0])
    assert one.returncode == 0 and one.stdout.splitlines() == [f"worker {pids[0]} idle ({files[0]})"]

    # A worker killed outright leaves its file: it is passed over. One stopped by SIGTERM removes its own.
    killed, stopped = (w for w in workers if w.pid == pids[0]), (w for w in workers if w.pid == pids[1])
    killed, stopped = next(killed), next(stopped)
    killed.kill()
    killed.wait(10)
    left = run_health(tmp_path)
    assert left.returncode == 0 and left.stdout.splitlines() == [f"worker {pids[1]} idle ({files[1]})"]
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(30) == 0
    assert not os.path.exists(files[1])
    none = run_health(tmp_path)
    assert none.returncode == 1 and none.stdout.startswith("no worker here: ")


def test_a_worker_says_where_its_health_file_is(tmp_path, service_factory):
    svc = service_factory(TMPDIR=str(tmp_path)).start()
    worker = svc.start_worker(RERANKER_HEALTH_FILE="")
    svc.wait_ready(1)
    deadline = time.monotonic() + 30
    expected = f"worker {worker.pid}: health file {tmp_path}/reranker-worker-{worker.pid}.json"
    while expected not in svc.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expected in svc.logs()
