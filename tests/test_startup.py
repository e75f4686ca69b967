"""Starting and stopping the programs as a user does, as real processes: a start that cannot succeed
says why in one last line and exits non-zero at once; Ctrl-C and SIGTERM stop them with exit 0 and
no noise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devkit.procs import clean_env, free_port
from tests.service import Service

# Generous for a loaded 2-core machine; each of these programs stops within seconds when it works, and a
# wait fails at once, with the output, when the process has exited.
TIMEOUT = 120
LOAD_TIMEOUT = 300  # a worker loading a (tiny) model while other processes use both cores


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=clean_env(**env), capture_output=True,
                          text=True, timeout=TIMEOUT)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    """Send `sig` to the process's group, as a terminal sends Ctrl-C; its exit code and output."""
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


def spawn(argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=clean_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


# -- the gateway -------------------------------------------------------------------------------

@pytest.fixture
def first(service_factory):
    """A running gateway whose endpoints a second one on this host would collide with."""
    return service_factory().start()


def second_gateway(tmp_path: Path, first: Service, **env: str) -> subprocess.CompletedProcess:
    """A second `python -m gateway` with its own endpoints, except those in `env`."""
    own = {"HOST": "127.0.0.1", "PORT": str(free_port()), "RERANKER_WORKERS_BIND": f"tcp://127.0.0.1:{free_port()}",
           "RERANKER_FRONTEND": f"ipc://{tmp_path}/second.ipc"}
    return run(["-m", "gateway"], tmp_path, **{**own, **env})


@pytest.mark.parametrize("taken, line", [
    ("PORT", "gateway: cannot start: port {port} is in use (another gateway?): choose another port with PORT "
             "or --port"),
    ("RERANKER_WORKERS_BIND", "gateway: cannot start: the workers' port {worker_port} (tcp://127.0.0.1:"
                              "{worker_port}) is in use (another gateway?): choose another with "
                              "RERANKER_WORKERS_BIND or --workers-bind, and point the workers' "
                              "RERANKER_BROKER_URL at it"),
    ("RERANKER_FRONTEND", "gateway: cannot start: the broker endpoint {frontend} is in use by another gateway: "
                          "choose another with RERANKER_FRONTEND or --frontend-url"),
])
def test_a_second_gateway_on_a_taken_endpoint_says_which_in_one_line(tmp_path, first, taken, line):
    proc = second_gateway(tmp_path, first, **{taken: first.env[taken]})
    assert proc.returncode == 1
    expected = line.format(port=first.port, worker_port=first.worker_port, frontend=first.env["RERANKER_FRONTEND"])
    assert (proc.stdout + proc.stderr).splitlines() == [expected]
    assert first.get("/health").status_code == 200
    assert first.ready() != {}, "the first gateway lost its broker"


def test_a_file_left_by_a_dead_broker_does_not_block_a_start(tmp_path, service_factory):
    stale = tmp_path / "stale.ipc"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file that nobody listens on any more
    svc = service_factory(RERANKER_FRONTEND=f"ipc://{stale}").start()
    assert svc.ready() == {"workers": 0, "idle": 0, "queued": 0, "running": 0, "pool": []}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_gateway_stops_on_ctrl_c_and_sigterm_with_exit_0_and_no_noise(tmp_path, sig):
    port = free_port()
    proc = spawn(["-m", "gateway"], tmp_path, HOST="127.0.0.1", PORT=str(port),
                 RERANKER_WORKERS_BIND=f"tcp://127.0.0.1:{free_port()}", RERANKER_FRONTEND=f"ipc://{tmp_path}/f.ipc")
    try:
        wait_until_ready(proc, port)  # the gateway and its broker are up, as a user sees it
    finally:
        code, out = interrupt(proc, sig)
    assert code == 0, out
    assert "Bad file descriptor" not in out and "Traceback" not in out, out
    assert not [line for line in out.splitlines() if "WARNING" in line or "ERROR" in line], out


def wait_until_ready(proc: subprocess.Popen, port: int) -> None:
    """Until /ready answers (503: no worker yet), or fail with the output if the gateway exits."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 503:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not answer /ready")


def read_until(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """The process's output up to the line holding `text`; fails with the output if it exits first."""
    out = ""
    deadline = time.monotonic() + timeout
    while text not in out:
        assert time.monotonic() < deadline, f"no {text!r} in {timeout:g} s:\n{out}"
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"exited with {proc.wait()} before {text!r}:\n{out}"
        out += line
    return out


# -- the worker --------------------------------------------------------------------------------

def test_a_hub_name_with_the_hub_unreachable_fails_at_once_with_what_to_do(tmp_path):
    # A hub that refuses connections (a closed local port): as a machine without the hub sees it.
    proc = run(["-m", "worker"], tmp_path, RERANKER_MODEL="someone/not-a-model", HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 3
    assert proc.stdout == "" and "Retrying" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("worker: cannot load model 'someone/not-a-model': the Hugging Face hub at http://127.0.0.1:")
    assert "is unreachable" in last and "not in the local Hugging Face cache" in last
    assert "point RERANKER_MODEL at a local model directory" in last


def test_a_hub_name_unreachable_here_fails_at_once(tmp_path):
    """The default hub, from this machine: where it is unreachable, no minute of retries."""
    proc = run(["-m", "worker"], tmp_path, RERANKER_MODEL="someone/not-a-model", HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 3
    assert "Retrying" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("worker: cannot load model 'someone/not-a-model': ")


def test_a_missing_directory_fails_at_once_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = run(["-m", "worker"], tmp_path, RERANKER_MODEL=str(missing))
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1] == (
        f"worker: cannot load model '{missing}': no such directory; point RERANKER_MODEL at a directory saved "
        f"with CrossEncoder.save_pretrained, or at a Hugging Face hub name")


def hub_cache(root: Path, repo: str, model_dir: Path) -> Path:
    """A Hugging Face cache (HF_HOME=root) holding `model_dir` as the snapshot of `repo`, as a download leaves it."""
    commit = "0" * 40
    repo_dir = root / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


@pytest.mark.model
def test_a_cached_hub_model_loads_offline_and_sigterm_stops_it_with_exit_0(tmp_path, tiny_model):
    hf_home = hub_cache(tmp_path / "hf", "someone/tiny-reranker", tiny_model)
    proc = spawn(["-m", "worker"], tmp_path, RERANKER_MODEL="someone/tiny-reranker", HF_HOME=str(hf_home),
                 HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", RERANKER_BROKER_URL=f"tcp://127.0.0.1:{free_port()}",
                 RERANKER_HEALTH_FILE=str(tmp_path / "health.json"), NUM_THREADS="1")
    try:
        out = read_until(proc, "READY sent", LOAD_TIMEOUT)
    finally:
        code, rest = interrupt(proc, signal.SIGTERM)
    out += rest
    assert "is unreachable" in out and "from the Hugging Face cache" in out
    assert code == 0, out
    assert "Retrying" not in out and "Traceback" not in out


@pytest.mark.model
def test_ctrl_c_while_the_model_loads_exits_0_without_a_traceback(tmp_path, tiny_model):
    proc = spawn(["-m", "worker"], tmp_path, RERANKER_MODEL=str(tiny_model), NUM_THREADS="1",
                 RERANKER_BROKER_URL=f"tcp://127.0.0.1:{free_port()}")
    try:
        read_until(proc, "loading model", LOAD_TIMEOUT)
    finally:
        code, out = interrupt(proc)
    assert code == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "READY sent" not in out, "stopped after loading, not while"
