"""scripts/dev.sh, run for real on a copy of the project's install files: it installs only when they
changed, takes torch from the PyTorch CPU index first and refuses a CUDA build; `serve` starts the
gateway, then N workers sharing the cores, stops them all on Ctrl-C with exit 0, and ends a failed start
with the line that says why.

The virtualenv is a stand-in: its python is this interpreter, except that `pip install` only records its
arguments (and "installs" a fake torch module, CUDA or not, where torch was asked for)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devkit.procs import clean_env, free_port
from shared.settings import usable_cpus

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2 $3" = "-m pip install" ]; then
  echo "$*" >> "{log}"
  case "$*" in *download.pytorch.org*) [ -z "$PYTORCH_INDEX_DOWN" ] || exit 1 ;; esac
  case "$*" in *torch==*) printf '__version__ = "2.13.0"\nclass version: cuda = %s\n' "$FAKE_CUDA" > "{site}/torch/__init__.py" ;; esac
  exit 0
fi
PYTHONPATH="{site}:{root}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{python}" "$@"
"""


@pytest.fixture
def project(tmp_path):
    """A copy of dev.sh and the files it installs from, and a stand-in virtualenv; returns (dir, venv, pip log)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "dev.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "constraints", tmp_path / "constraints")
    venv, site, log = tmp_path / "venv", tmp_path / "venv-site", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise ImportError('not installed yet')")  # hides this one's
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(log=log, site=site, root=ROOT, python=sys.executable))
    python.chmod(0o755)
    return tmp_path, venv, log


def dev(project, *args: str, **env: str) -> subprocess.CompletedProcess:
    where, venv, _ = project
    return subprocess.run(["bash", "scripts/dev.sh", *args], cwd=where, capture_output=True, text=True,
                          timeout=TIMEOUT, env=clean_env(**{"VENV": str(venv), "FAKE_CUDA": "None", **env}))


def installs(project) -> list[str]:
    log = project[2]
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_once_until_pyproject_changes(project):
    first = dev(project, "setup")
    assert first.returncode == 0, first.stderr
    assert [line for line in installs(project) if "-e .[worker,dev]" in line]
    done = len(installs(project))
    again = dev(project, "setup")
    assert again.returncode == 0 and len(installs(project)) == done and again.stderr == ""
    with open(project[0] / "pyproject.toml", "a") as fh:
        fh.write("\n# a change\n")
    changed = dev(project, "setup")
    assert changed.returncode == 0 and len(installs(project)) == done + 1
    assert "installing the project" in changed.stderr


def test_torch_comes_from_the_pytorch_cpu_index_first(project):
    assert dev(project, "setup").returncode == 0
    torch = [line for line in installs(project) if "torch==" in line and "-e ." not in line]
    assert len(torch) == 1 and "--index-url https://download.pytorch.org/whl/cpu" in torch[0]


def test_an_unreachable_cpu_index_falls_back_to_the_default_index(project):
    proc = dev(project, "setup", PYTORCH_INDEX_DOWN="1")
    assert proc.returncode == 0, proc.stderr
    torch = [line for line in installs(project) if "torch==" in line and "-e ." not in line]
    assert len(torch) == 2 and "--retries 0" in torch[0] and "--index-url" not in torch[1]
    assert "the PyTorch CPU index cannot be reached" in proc.stderr


def test_a_cuda_torch_is_refused_with_what_to_do(project):
    proc = dev(project, "setup", FAKE_CUDA="'12.4'")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "is a CUDA build" in last and "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in last
    assert not [line for line in installs(project) if "-e ." in line], "went on installing the project"


def serve(project, n: int, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    assert dev(project, "setup").returncode == 0
    where, venv, _ = project
    proc = subprocess.Popen(["bash", "scripts/dev.sh", "serve", str(n)], cwd=where, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=clean_env(VENV=str(venv), FAKE_CUDA="None", HOST="127.0.0.1", PORT=str(port),
                                          RERANKER_WORKERS_BIND=f"tcp://127.0.0.1:{(wp := free_port())}",
                                          RERANKER_BROKER_URL=f"tcp://127.0.0.1:{wp}",
                                          RERANKER_FRONTEND=f"ipc://{where}/frontend.ipc", **env))
    return proc, port


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_serve_runs_n_workers_that_share_the_cores_and_ctrl_c_stops_all(project):
    proc, port = serve(project, 2, RERANKER_BACKEND="stub")
    try:
        deadline, ready = time.monotonic() + TIMEOUT, {}
        while ready.get("workers") != 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).json()
            except (httpx.TransportError, ValueError):
                time.sleep(0.2)
        envs = [environ(w["pid"]) for w in ready["pool"]]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    assert {e["NUM_THREADS"] for e in envs} == {str(max(1, usable_cpus() // 2))}
    pools = {e["RERANKER_POOL"] for e in envs}
    assert len(pools) == 1 and pools.pop().startswith(f"dev-{port}-")
    banner = [line for line in out.splitlines() if line.startswith("dev: gateway on ")]
    assert banner == [f"dev: gateway on http://127.0.0.1:{port} (API docs: http://127.0.0.1:{port}/docs); "
                      f"starting 2 worker(s), NUM_THREADS={envs[0]['NUM_THREADS']} each; Ctrl-C stops all"]
    assert out.index("Listening at: ") < out.index(banner[0]), "the banner came before the gateway listened"
    assert "Traceback" not in out and "Bad file descriptor" not in out and "ERROR" not in out, out


def test_serve_ends_a_failed_start_with_the_line_that_says_why(project):
    missing = project[0] / "no-such-model"
    proc, _ = serve(project, 1, RERANKER_MODEL=str(missing), NUM_THREADS="1")
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 3, out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"dev: worker 1 exited with code 3; the others were stopped\. It said: worker: cannot load "
                        rf"model '{re.escape(str(missing))}': no such directory; .*", last), last
