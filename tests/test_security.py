"""Only trusted workers, and only local links: CURVE on the workers port, the allow-list of worker keys,
the loopback default, the local link between the gateway processes and the broker. Real processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from devkit.procs import clean_env, free_port
from shared.curve import write_keys
from shared.endpoints import is_local
from shared.settings import Settings, SettingsError
from tests.test_gateway import QUERY, SENTENCES, expected_body

WIDE_OPEN = "is open to other hosts without CURVE"


def as_env(paths: dict) -> dict[str, str]:
    return {variable: str(path) for variable, path in paths.items()}


def wait_for_log(svc, text: str, timeout: float = 20) -> None:
    svc.wait_for(lambda: text in svc.logs(), timeout, f"{text!r} in the logs")


@pytest.fixture
def keys(tmp_path):
    return write_keys(tmp_path / "keys", "trusted")


@pytest.fixture
def curve_service(service_factory, keys):
    svc = service_factory(**as_env(keys["broker"]))
    svc.start_gateway()
    return svc


def test_an_allowed_worker_serves_over_curve(curve_service, keys):
    svc = curve_service
    svc.start_worker(**as_env(keys["worker"]))
    svc.wait_ready(1)
    for i in range(5):
        ids = [i * 10 + k for k in range(len(SENTENCES))]
        assert svc.rerank(QUERY, SENTENCES, ids).content == expected_body(QUERY, SENTENCES, ids)
    assert "CURVE on for the workers port" in svc.logs()


def test_a_worker_with_an_unknown_key_never_receives_work(curve_service, keys, tmp_path):
    svc = curve_service
    stranger = write_keys(tmp_path / "keys", "stranger")  # the broker's public key, but a key not allowed
    allowed = keys["broker"]["RERANKER_CURVE_ALLOWED_KEYS"] / "stranger.key"
    allowed.unlink()
    svc.start_worker(**as_env(keys["worker"]))
    svc.wait_ready(1)
    trusted_pid = svc.ready()["pool"][0]["pid"]
    svc.start_worker(**as_env(stranger["worker"]))
    wait_for_log(svc, "refused a worker from 127.0.0.1: its CURVE public key")
    wait_for_log(svc, "refused this worker's CURVE key")  # the stranger's own log says why
    for i in range(20):  # a query each: the broker's cache answers repeated pairs without any worker
        assert svc.rerank(f"{QUERY} {i}", SENTENCES).status_code == 200
    pool = svc.ready()["pool"]
    assert [w["pid"] for w in pool] == [trusted_pid]
    assert pool[0]["pairs"] >= 20 * len(SENTENCES), "all the work went to the allowed worker"
    # The allow-list is read again as workers connect: a key added there is let in without a restart.
    shutil.copyfile(tmp_path / "keys" / "stranger" / "worker.key", allowed)
    svc.wait_ready(2, timeout=60)  # at the stranger's next try (its back-off doubles from 1 s)


def test_a_plain_text_worker_is_refused_when_curve_is_on(curve_service, keys):
    svc = curve_service
    svc.start_worker(**as_env(keys["worker"]))
    svc.wait_ready(1)
    svc.start_worker()  # no keys at all
    wait_for_log(svc, "the handshake failed (no CURVE")
    wait_for_log(svc, "refused this worker: it requires CURVE")
    assert svc.rerank(QUERY, SENTENCES).status_code == 200
    assert len(svc.ready()["pool"]) == 1


def test_a_worker_given_another_brokers_key_is_refused(curve_service, keys, tmp_path):
    svc = curve_service
    elsewhere = write_keys(tmp_path / "elsewhere", "trusted")  # a pair from another deployment
    svc.start_worker(**as_env(elsewhere["worker"]))
    wait_for_log(svc, "the handshake failed (a worker given another broker's public key?)")
    assert svc.ready()["workers"] == 0


def test_a_curve_worker_cannot_join_a_plain_broker(service_factory, keys):
    svc = service_factory()
    svc.start_gateway()
    svc.start_worker(**as_env(keys["worker"]))
    wait_for_log(svc, "a worker with CURVE keys: this broker has none")
    assert svc.ready()["workers"] == 0


@pytest.mark.parametrize("variable", ["RERANKER_CURVE_BROKER_KEY", "RERANKER_CURVE_ALLOWED_KEYS"])
def test_an_unreadable_broker_key_stops_the_gateway_at_start(tmp_path, keys, variable):
    env = clean_env(PORT=str(free_port()), RERANKER_FRONTEND=f"ipc://{tmp_path}/f.ipc", **as_env(keys["broker"]))
    env[variable] = str(tmp_path / "missing")
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"configuration error: {variable}=") and "missing" in line


def test_a_key_file_without_the_secret_stops_the_worker_at_start(tmp_path, keys):
    env = clean_env(RERANKER_BACKEND="stub", RERANKER_HEALTH_FILE=str(tmp_path / "h.json"), **as_env(keys["worker"]))
    env["RERANKER_CURVE_WORKER_KEY"] = env["RERANKER_CURVE_BROKER_PUBLIC_KEY"]  # a public key only
    proc = subprocess.run([sys.executable, "-m", "worker"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"configuration error: RERANKER_CURVE_WORKER_KEY="
                                        f"{env['RERANKER_CURVE_WORKER_KEY']!r} holds no secret key: give the "
                                        f"NAME.key_secret file"]


def test_curve_settings_come_in_pairs():
    with pytest.raises(SettingsError, match="^RERANKER_CURVE_BROKER_KEY is set but RERANKER_CURVE_ALLOWED_KEYS is not"):
        Settings.load({"RERANKER_CURVE_BROKER_KEY": "/k/broker.key_secret"}, dotenv=None)
    with pytest.raises(SettingsError, match="^RERANKER_CURVE_BROKER_PUBLIC_KEY is set but RERANKER_CURVE_WORKER_KEY"):
        Settings.load({"RERANKER_CURVE_BROKER_PUBLIC_KEY": "/k/broker.key"}, dotenv=None)


def test_reranker_keys_writes_each_sides_files(tmp_path):
    def keys(*args):
        return subprocess.run([sys.executable, "-m", "reranker", "keys", *args], cwd=tmp_path, env=clean_env(),
                              capture_output=True, text=True, timeout=60)

    first = keys("k")
    assert first.returncode == 0, first.stderr
    settings = dict(line.split("=", 1) for line in first.stdout.splitlines() if not line.startswith("#"))
    assert set(settings) == {"RERANKER_CURVE_BROKER_KEY", "RERANKER_CURVE_ALLOWED_KEYS", "RERANKER_CURVE_WORKER_KEY",
                             "RERANKER_CURVE_BROKER_PUBLIC_KEY"}
    broker_secret = (tmp_path / settings["RERANKER_CURVE_BROKER_KEY"]).read_bytes()
    assert sorted(p.name for p in (tmp_path / settings["RERANKER_CURVE_ALLOWED_KEYS"]).iterdir()) == ["worker.key"]
    assert (tmp_path / settings["RERANKER_CURVE_WORKER_KEY"]).stat().st_mode & 0o077 == 0, "secret: owner only"
    second = keys("k", "--worker", "host2")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / settings["RERANKER_CURVE_BROKER_KEY"]).read_bytes() == broker_secret, "one broker pair"
    assert sorted(p.name for p in (tmp_path / "k/broker/allowed").iterdir()) == ["host2.key", "worker.key"]
    again = keys("k", "--worker", "host2")
    assert again.returncode == 2 and "exists" in again.stderr


# -- local links and the loopback default ------------------------------------------------

@pytest.mark.parametrize("endpoint, local", [
    ("ipc:///tmp/x.ipc", True), ("inproc://x", True), ("tcp://127.0.0.1:5556", True), ("tcp://127.9.9.9:5556", True),
    ("tcp://localhost:5556", True), ("tcp://[::1]:5556", True),
    ("tcp://0.0.0.0:5556", False), ("tcp://*:5556", False), ("tcp://10.0.0.5:5556", False), ("tcp://[::]:5556", False),
    ("tcp://gateway:5556", False), ("tcp://eth0:5556", False), ("tcp://127.0.0.1;10.0.0.5:5556", False),
])
def test_which_endpoints_are_local(endpoint, local):
    assert is_local(endpoint) is local


def test_the_link_to_the_broker_must_be_local(tmp_path):
    assert Settings.load({"RERANKER_FRONTEND": "tcp://127.0.0.1:5556"}, dotenv=None).frontend_url == "tcp://127.0.0.1:5556"
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=tmp_path, timeout=60, capture_output=True, text=True,
                          env=clean_env(PORT=str(free_port()), RERANKER_FRONTEND="tcp://10.0.0.5:5556"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "configuration error: RERANKER_FRONTEND='tcp://10.0.0.5:5556' is invalid: expected a local ZeroMQ endpoint: "
        "ipc:///path, or tcp:// on a loopback address such as tcp://127.0.0.1:5556"]


def test_a_tcp_link_on_loopback_serves(service_factory):
    svc = service_factory(RERANKER_FRONTEND=f"tcp://127.0.0.1:{free_port()}").start(workers=1)
    assert svc.rerank(QUERY, SENTENCES).content == expected_body(QUERY, SENTENCES, list(range(6)))


def test_binding_wider_without_curve_warns_once_at_start(service_factory):
    svc = service_factory()
    svc.env["RERANKER_WORKERS_BIND"] = f"tcp://0.0.0.0:{svc.worker_port}"
    svc.start(workers=1)
    time.sleep(0.5)
    warnings = [line for line in svc.logs().splitlines() if WIDE_OPEN in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and f"tcp://0.0.0.0:{svc.worker_port}" in warnings[0]


def test_binding_wider_with_curve_does_not_warn(service_factory, keys):
    svc = service_factory(**as_env(keys["broker"]))
    svc.env["RERANKER_WORKERS_BIND"] = f"tcp://0.0.0.0:{svc.worker_port}"
    svc.start(workers=1, **as_env(keys["worker"]))
    assert WIDE_OPEN not in svc.logs() and "CURVE on for the workers port tcp://0.0.0.0:" in svc.logs()
