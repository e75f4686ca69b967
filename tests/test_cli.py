"""The command line of the programs: `python -m gateway`, `python -m worker`, `python -m worker.health`
and the `reranker` command (reranker/cli.py), run as real processes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.procs import clean_env, free_port
from shared.settings import options

ROOT = Path(__file__).resolve().parent.parent
# Long enough for a loaded 2-core machine; a program that started serving instead of printing its
# help would run until killed here.
TIMEOUT = 60


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=clean_env(COLUMNS="1000", **env),
                          capture_output=True, text=True, timeout=TIMEOUT)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Modules listed by `python -X importtime` ("import time: self | cumulative | module")."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def assert_lists_its_options(help_text: str, service: str) -> None:
    text = re.sub(r"\s+", " ", help_text)
    for o in options(service):
        assert f"{o.flag} {o.form.metavar} " in text and f"[env {o.env}, default {o.default}]" in text, o.flag
    others = {o.flag for o in options()} - {o.flag for o in options(service)}
    assert others and not any(f"{flag} " in text for flag in others), "another service's options"


def test_gateway_help_lists_its_options_and_starts_nothing(tmp_path):
    port = free_port()
    frontend = tmp_path / "frontend.ipc"
    proc = run(["-X", "importtime", "-m", "gateway", "--help"], tmp_path,
               PORT=str(port), RERANKER_FRONTEND=f"ipc://{frontend}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m gateway ")
    assert_lists_its_options(proc.stdout, "gateway")
    assert not frontend.exists(), "the broker was started"
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing listens there
    assert not {m for m in imported_modules(proc.stderr) if m.split(".")[0] in ("torch", "sentence_transformers")}


def test_worker_help_lists_its_options_and_loads_no_model(tmp_path):
    health = tmp_path / "health.json"
    # Loading this model would fail (exit 3); --help must not try.
    proc = run(["-m", "worker", "--help"], tmp_path, RERANKER_MODEL=str(tmp_path / "no-such-model"),
               HF_HUB_OFFLINE="1", RERANKER_HEALTH_FILE=str(health))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m worker ")
    assert_lists_its_options(proc.stdout, "worker")
    assert proc.stderr == "" and not health.exists()


def test_reranker_command_dispatches_with_the_same_options(tmp_path):
    top = run(["-m", "reranker", "--help"], tmp_path)
    assert top.returncode == 0 and all(f"reranker {c}" in top.stdout for c in ("gateway", "worker", "bench"))
    gateway = run(["-X", "importtime", "-m", "reranker", "gateway", "--help"], tmp_path)
    assert gateway.returncode == 0, gateway.stderr[-2000:]
    assert gateway.stdout.startswith("usage: reranker gateway ")
    assert_lists_its_options(gateway.stdout, "gateway")
    assert "torch" not in {m.split(".")[0] for m in imported_modules(gateway.stderr)}
    worker = run(["-m", "reranker", "worker", "--help"], tmp_path)
    assert worker.returncode == 0 and worker.stdout.startswith("usage: reranker worker ")
    assert_lists_its_options(worker.stdout, "worker")
    unknown = run(["-m", "reranker", "serve"], tmp_path)
    assert unknown.returncode == 2 and "no command 'serve'" in unknown.stderr


def test_the_reranker_script_is_that_command():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["reranker"] == "reranker.cli:main"
    assert any(d.startswith("pydantic-settings") for d in project["dependencies"]), "the gateway image needs it"


def test_reranker_bench_runs_the_suite_from_a_checkout_and_says_where_it_is_missing(tmp_path):
    suite = run(["-m", "reranker", "bench", "--help"], ROOT)
    assert suite.returncode == 0 and suite.stdout.startswith("usage: python -m benchmarks")
    # An install without the source tree: the packages alone on the path.
    for package in ("shared", "reranker"):
        (tmp_path / package).symlink_to(ROOT / package)
    missing = subprocess.run([sys.executable, "-m", "reranker", "bench", "run", "--quick"], cwd=tmp_path,
                             env={**clean_env(), "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert missing.returncode == 2
    assert "benchmark suite" in missing.stderr and "source tree" in missing.stderr


def test_a_flag_wins_over_the_variable_over_dotenv_in_a_program(tmp_path):
    """Through a real main(): worker.health names the health file it read."""
    (tmp_path / ".env").write_text(f"RERANKER_HEALTH_FILE={tmp_path / 'from-dotenv.json'}\n")
    health = ["-m", "worker.health"]
    assert "from-dotenv.json" in run(health, tmp_path).stdout
    env = {"RERANKER_HEALTH_FILE": str(tmp_path / "from-env.json")}
    assert "from-env.json" in run(health, tmp_path, **env).stdout
    flagged = run([*health, "--health-file", str(tmp_path / "from-flag.json")], tmp_path, **env)
    assert flagged.returncode == 1 and "from-flag.json" in flagged.stdout


@pytest.mark.parametrize("argv, line", [
    (["-m", "gateway", "--port", "70000"], "--port='70000' is invalid: expected an integer in 1..65535"),
    (["-m", "worker", "--num-threads", "0"], "--num-threads='0' is invalid: expected an integer >= 1"),
    (["-m", "gateway", "--model", "x"], "command line: unrecognized arguments: --model x"),
    (["-m", "reranker", "worker", "--backend", "tensorflow"],
     "--backend='tensorflow' is invalid: expected one of auto, torch, onnx, openvino, stub"),
])
def test_a_bad_flag_stops_the_program_with_one_line(tmp_path, argv, line):
    proc = run(argv, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"configuration error: {line}"]

