"""The Docker images and the compose deployment.

Static checks of the Dockerfiles, .dockerignore and compose files run everywhere
(`docker compose config` where the docker CLI is installed). The end-to-end
tests (marker `docker`) build both images and run the compose project on a real
engine: an external bridge network made by the test, 3 stub workers scaled to 5
and back to 1 under load, a worker killed under load, the gateway restarted, every
worker recreated by a configuration change under load, and the real torch backend
on a tiny local model. They skip, in one line, where no engine answers `docker info`
or the base image can be neither found nor pulled; CI provides both.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from shared.settings import SERVICES, options
from tests.docker_helpers import ROOT, Stack, base_image, docker, docker_unavailable, wait_for

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose files")

COMPOSE = ROOT / "docker-compose.yml"
DEV = ROOT / "docker-compose.dev.yml"
LOCAL_MODEL = ROOT / "deploy" / "compose" / "local-model.yml"
CURVE_BROKER = ROOT / "deploy" / "compose" / "curve-broker.yml"
CURVE_WORKER = ROOT / "deploy" / "compose" / "curve-worker.yml"
SETTINGS_VARS = {o.env for o in options()}
# Set in the images or fixed in the compose file, not knobs: clients and workers rely on them.
FIXED = {"HOST": "0.0.0.0", "PORT": "8300", "RERANKER_WORKERS_BIND": "tcp://0.0.0.0:5555",
         "RERANKER_BROKER_URL": "tcp://gateway:5555"}
INTERNAL = {"RERANKER_FRONTEND", "RERANKER_HEALTH_FILE", "RERANKER_METRICS_DIR"}  # per container, defaults are right
NOT_SETTINGS = {"HF_HUB_OFFLINE"}  # passed to the Hugging Face libraries, not to Settings


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -- Dockerfiles ---------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("name", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_dockerfile_base_args_user_healthcheck(name):
    ins = instructions(ROOT / name)
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim"), "BASE_IMAGE must be declared before the first FROM"
    final = final_stage(ins)
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    args = {rest.split("=")[0]: rest.partition("=")[2] for word, rest in final if word == "ARG"}
    assert args.get("PIP_INDEX_URL") == "https://pypi.org/simple"
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert sum(word == "HEALTHCHECK" for word, _ in final) == 1
    assert [word for word, _ in final].count("CMD") == 1


def test_worker_dockerfile_installs_cpu_torch_before_deps_and_code():
    final = final_stage(instructions(ROOT / "Dockerfile.worker"))
    args = {rest.split("=")[0]: rest.partition("=")[2] for word, rest in final if word == "ARG"}
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    runs = [i for i, (word, _) in enumerate(final) if word == "RUN"]
    copies = [i for i, (word, _) in enumerate(final) if word in ("COPY", "ADD")]
    torch_run = [i for i in runs if '--index-url "${TORCH_INDEX_URL}"' in final[i][1] and "torch==" in final[i][1]]
    deps_run = [i for i in runs if "pyproject.toml" in final[i][1]]
    assert torch_run and deps_run, "torch, then the dependencies from pyproject.toml, each in a RUN"
    # Code is copied last, so a code change rebuilds neither torch nor the dependencies.
    assert torch_run[0] < deps_run[0] < min(copies)
    assert all("--mount=type=bind,source=pyproject.toml" in final[i][1] for i in deps_run)
    assert "HF_HOME=/cache/huggingface" in " ".join(rest for word, rest in final if word == "ENV")
    healthcheck = next(rest for word, rest in final if word == "HEALTHCHECK")
    assert "worker.health" in healthcheck
    # vfs copies the whole file system for each layer: at most 2 file-system layers after torch.
    assert len([i for i in runs + copies if i > torch_run[0]]) <= 2


def test_gateway_dockerfile_has_no_model_libraries():
    final = final_stage(instructions(ROOT / "Dockerfile.gateway"))
    text = " ".join(rest for _, rest in final).lower()
    for lib in ("torch", "sentence-transformers", "sentence_transformers", "transformers", "optional-dependencies"):
        assert lib not in text, f"{lib} does not belong in the gateway image"
    runs = [i for i, (word, _) in enumerate(final) if word == "RUN"]
    copies = [i for i, (word, _) in enumerate(final) if word in ("COPY", "ADD")]
    assert max(runs) < min(copies), "dependencies are installed before the code is copied"
    assert "8300/health" in next(rest for word, rest in final if word == "HEALTHCHECK").replace("%s", "8300")


def copied_packages(name: str) -> set[str]:
    """Top-level packages that a Dockerfile copies into /app."""
    return {m.group(1) for m in re.finditer(r"^COPY (\w+)/ /app/\1/", (ROOT / name).read_text(), re.M)}


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_packages(entry_modules: list[str]) -> set[str]:
    """Top-level local packages of every module that the entry modules import, transitively
    (imports inside functions included: lazily loaded backends count)."""
    seen, todo = set(), list(entry_modules)
    while todo:
        module = todo.pop()
        path = module_file(module) if module else None
        if module in seen or path is None:
            continue
        seen.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module
                todo.append(target)
                todo.extend(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
    return {m.split(".")[0] for m in seen}


@pytest.mark.parametrize("name, entries", [("Dockerfile.gateway", ["gateway.__main__"]),
                                           ("Dockerfile.worker", ["worker.__main__", "worker.health"])])
def test_images_copy_every_package_their_code_imports(name, entries):
    copied = copied_packages(name)
    needed = reachable_packages(entries)
    assert entries[0].split(".")[0] in needed
    assert needed <= copied, f"{name} lacks {needed - copied}"
    assert not copied & {"devkit", "benchmarks", "tests"}, "development tools stay out of the images"
    if name == "Dockerfile.gateway":
        assert "worker" not in copied


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a match on a parent matches."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                j = pattern.index("]", i)
                out, i = out + pattern[i:j + 1], j + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_images_need():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for path in ("pyproject.toml", "shared/settings.py", "gateway/app.py", "worker/loop.py"):
        assert not dockerignored(path, patterns), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_compose.py", "README.md", ".env",
                 "benchmarks/.models/tiny/model.safetensors", "devkit/models.py",
                 "worker/__pycache__/loop.cpython-311.pyc",
                 "docs/deployment.md", "docker-compose.yml", "Dockerfile.worker", "deploy/k8s/worker.yaml"):
        assert dockerignored(path, patterns), path
    # Every file the images copy is in the context.
    for name in ("Dockerfile.gateway", "Dockerfile.worker"):
        for pkg in copied_packages(name):
            for f in (ROOT / pkg).glob("*.py"):
                assert not dockerignored(f"{pkg}/{f.name}", patterns)


# -- compose files ---------------------------------------------------------------

def test_compose_services_networks_and_no_published_ports():
    c = load(COMPOSE)
    assert set(c["services"]) == {"gateway", "worker"}
    for name, svc in c["services"].items():
        assert "ports" not in svc, f"{name} must not publish ports"
        assert svc["build"]["network"] == "${BUILD_NETWORK:-default}"
        assert {"BASE_IMAGE", "PIP_INDEX_URL"} <= set(svc["build"]["args"])
        assert svc["image"].endswith(":${RERANKER_IMAGE_TAG:-latest}"), "tagged, so that rebuilds replace them"
    assert "TORCH_INDEX_URL" in c["services"]["worker"]["build"]["args"]
    assert c["services"]["gateway"]["build"]["dockerfile"] == "Dockerfile.gateway"
    assert c["services"]["worker"]["build"]["dockerfile"] == "Dockerfile.worker"
    # The gateway is on the backend's external network as cross_encoder.
    shared = [k for k, n in c["networks"].items() if n.get("external")]
    assert len(shared) == 1
    assert c["networks"][shared[0]]["name"] == "${RERANKER_NETWORK:-wdoi_internal}"
    gw_nets = c["services"]["gateway"]["networks"]
    assert "cross_encoder" in gw_nets[shared[0]]["aliases"]
    # Workers reach the broker by service name, on the private network, not the shared one.
    worker = c["services"]["worker"]
    assert worker["environment"]["RERANKER_BROKER_URL"] == "tcp://gateway:5555"
    assert shared[0] not in worker["networks"]
    assert set(worker["networks"]) <= set(gw_nets)
    assert "replicas" in worker["deploy"]
    assert c["services"]["gateway"]["deploy"]["replicas"] == 1
    # Swarm: the gateway's names resolve to its task, not to a virtual IP (IPVS may be missing).
    assert c["services"]["gateway"]["deploy"]["endpoint_mode"] == "dnsrr"
    assert worker["build"]["args"]["WORKER_EXTRAS"] == "${WORKER_EXTRAS:-worker,onnx,openvino}"  # fast modes, no rebuild
    # One model cache for every replica, where the image points HF_HOME.
    hf_home = re.search(r"HF_HOME=(\S+)", (ROOT / "Dockerfile.worker").read_text()).group(1)
    volume = [v for v in worker["volumes"] if v.split(":")[1] == hf_home]
    assert volume and volume[0].split(":")[0] in c["volumes"]
    assert "worker.health" in " ".join(worker["healthcheck"]["test"])


def test_compose_has_a_knob_for_every_setting():
    """Each setting is a knob of exactly the compose services whose programs read it (as declared in
    shared/settings.py), fixed where FIXED says, else taken from the environment or .env."""
    c = load(COMPOSE)
    envs = {name: svc["environment"] for name, svc in c["services"].items()}
    assert set(envs) == set(SERVICES), "one compose service per program"
    known = SETTINGS_VARS | NOT_SETTINGS
    for name, env in envs.items():
        assert set(env) <= known, f"{name}: unknown variables {set(env) - known}"
    for o in options():
        if o.env in INTERNAL:
            continue
        holders = {name for name, env in envs.items() if o.env in env}
        readers = {name for name, parts in SERVICES.items() if set(o.read_by) & set(parts)}
        assert holders == readers, f"{o.env} is read by {o.read_by}: a knob of {readers}, not {holders}"
        for name in holders:
            value = str(envs[name][o.env])
            if o.env in FIXED:
                assert value == FIXED[o.env], o.env
            else:  # from the environment or .env
                assert value.startswith("${" + o.env + ":-"), f"{name}.{o.env}={value}"


def test_containers_run_read_only_without_privileges():
    """A read-only root file system, no capabilities, no privilege gain; /tmp a tmpfs. What else a
    container writes is a declared volume (the worker's model cache, tested above)."""
    for name, svc in load(COMPOSE)["services"].items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"]), name


def test_curve_overrides_mount_the_keys_where_the_settings_say():
    """Each CURVE setting the overrides give names a file or directory they mount: a compose secret
    (/run/secrets/NAME) or a read-only bind mount."""
    for path, service, variables in ((CURVE_BROKER, "gateway", {"RERANKER_CURVE_BROKER_KEY", "RERANKER_CURVE_ALLOWED_KEYS"}),
                                     (CURVE_WORKER, "worker", {"RERANKER_CURVE_WORKER_KEY",
                                                               "RERANKER_CURVE_BROKER_PUBLIC_KEY"})):
        override = load(path)
        svc = override["services"][service]
        assert set(svc["environment"]) == variables
        secrets = {f"/run/secrets/{name}" for name in svc["secrets"]}
        assert set(svc["secrets"]) <= set(override["secrets"])
        binds = {v["target"] for v in svc.get("volumes", []) if v["type"] == "bind" and v["read_only"] is True}
        for variable, value in svc["environment"].items():
            assert value in secrets | binds, f"{path.name}: {variable}={value} is not mounted"


def test_dev_override_creates_network_and_publishes_on_loopback_only():
    dev = load(DEV)
    base = load(COMPOSE)
    shared = next(k for k, n in base["networks"].items() if n.get("external"))
    assert dev["networks"][shared]["external"] is False
    assert dev["networks"][shared]["name"] == base["networks"][shared]["name"]
    ports = dev["services"]["gateway"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") and str(p).endswith(":8300") for p in ports)


def test_local_model_override_bind_mounts_read_only():
    override = load(LOCAL_MODEL)
    worker = override["services"]["worker"]
    (mount,) = worker["volumes"]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert mount["source"].startswith("${RERANKER_MODEL_DIR:?")
    assert worker["environment"]["RERANKER_MODEL"] == mount["target"]


def compose_config(*files: Path, project_dir: Path, env: dict | None = None) -> dict:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"],
                                                        capture_output=True).returncode != 0:
        pytest.skip("the docker CLI with the compose plugin is not installed")
    cmd = ["docker", "compose", "--project-directory", str(project_dir), "-p", "configcheck"]
    for f in files:
        cmd += ["-f", str(f)]
    base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    proc = subprocess.run(cmd + ["config", "--format", "json"], capture_output=True, text=True, timeout=60,
                          env={**base_env, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_config_defaults_and_dotenv(tmp_path):
    """The files are valid for Compose v2, defaults work, and .env is honoured."""
    plain = compose_config(COMPOSE, project_dir=tmp_path)
    assert plain["networks"]["backend"]["name"] == "wdoi_internal"
    worker = plain["services"]["worker"]
    assert worker["environment"]["NUM_THREADS"] == "2"
    assert worker["deploy"]["replicas"] == 2
    assert plain["services"]["gateway"]["environment"]["WEB_CONCURRENCY"] == "1"

    (tmp_path / ".env").write_text("NUM_THREADS=3\nWORKER_REPLICAS=4\nRERANKER_BACKEND=stub\n"
                                   "RERANKER_NETWORK=other_net\nRERANKER_MAX_SENTENCES=99\n")
    c = compose_config(COMPOSE, project_dir=tmp_path, env={"RERANKER_MAX_SENTENCES": "77"})
    worker = c["services"]["worker"]
    assert worker["environment"]["NUM_THREADS"] == "3"
    assert worker["environment"]["RERANKER_BACKEND"] == "stub"
    assert worker["deploy"]["replicas"] == 4
    assert c["networks"]["backend"]["name"] == "other_net"
    assert c["services"]["gateway"]["environment"]["RERANKER_MAX_SENTENCES"] == "77"  # the shell wins


def test_compose_config_dev_and_local_model(tmp_path):
    dev = compose_config(COMPOSE, DEV, project_dir=tmp_path)
    assert not dev["networks"]["backend"].get("external")
    (port,) = dev["services"]["gateway"]["ports"]
    assert (port["host_ip"], str(port["published"]), port["target"]) == ("127.0.0.1", "8300", 8300)
    model = compose_config(COMPOSE, LOCAL_MODEL, project_dir=tmp_path, env={"RERANKER_MODEL_DIR": str(tmp_path)})
    worker = model["services"]["worker"]
    bind = [v for v in worker["volumes"] if v["type"] == "bind"]
    assert bind[0]["source"] == str(tmp_path) and worker["environment"]["RERANKER_MODEL"] == bind[0]["target"]


def test_compose_config_with_curve_keys_from_reranker_keys(tmp_path):
    from shared.curve import write_keys

    keys = write_keys(tmp_path / "keys")
    env = {"RERANKER_CURVE_BROKER_DIR": str(tmp_path / "keys" / "broker"),
           "RERANKER_CURVE_WORKER_DIR": str(tmp_path / "keys" / "worker")}
    c = compose_config(COMPOSE, CURVE_BROKER, CURVE_WORKER, project_dir=tmp_path, env=env)
    files = {name: secret["file"] for name, secret in c["secrets"].items()}
    for service, side in (("gateway", "broker"), ("worker", "worker")):
        svc = c["services"][service]
        mounts = {f"/run/secrets/{s['source']}": files[s["source"]] for s in svc["secrets"]}
        mounts.update({v["target"]: v["source"] for v in svc["volumes"] if v["type"] == "bind"})
        for variable, path in keys[side].items():  # the container's path leads to the file reranker keys wrote
            assert mounts[svc["environment"][variable]] == str(path), variable
        assert svc["read_only"] is True
    proc = subprocess.run(["docker", "compose", "--project-directory", str(tmp_path), "-f", str(COMPOSE), "-f",
                           str(CURVE_BROKER), "config", "-q"], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]}, timeout=60)
    assert proc.returncode != 0 and "RERANKER_CURVE_BROKER_DIR" in proc.stderr


def test_compose_config_workers_on_other_hosts(tmp_path):
    exposed = compose_config(COMPOSE, ROOT / "deploy/compose/expose-broker.yml", project_dir=tmp_path,
                             env={"BROKER_PUBLISH": "10.0.0.5:5555"})
    (port,) = exposed["services"]["gateway"]["ports"]
    assert (port["host_ip"], str(port["published"]), port["target"]) == ("10.0.0.5", "5555", 5555)
    remote = compose_config(COMPOSE, ROOT / "deploy/compose/remote-workers.yml", project_dir=tmp_path,
                            env={"RERANKER_BROKER_ADDR": "10.0.0.5:5555"})
    assert remote["services"]["worker"]["environment"]["RERANKER_BROKER_URL"] == "tcp://10.0.0.5:5555"
    # Without an address given, the override refuses rather than publishing on every interface.
    proc = subprocess.run(["docker", "compose", "--project-directory", str(tmp_path), "-f", str(COMPOSE), "-f",
                           str(ROOT / "deploy/compose/expose-broker.yml"), "config", "-q"],
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, timeout=60)
    assert proc.returncode != 0 and "BROKER_PUBLISH" in proc.stderr


# -- end to end, on a real engine ------------------------------------------------

STUB_ENV = {
    "RERANKER_BACKEND": "stub",
    "RERANKER_STUB_DELAY_MS": "15",
    "NUM_THREADS": "1",
    "WORKER_CPUS": "1",
    "WORKER_MEMORY": "1g",
    "WORKER_REPLICAS": "3",  # deploy.replicas, honoured by `up`
    "RERANKER_HEARTBEAT_INTERVAL": "0.5",
    "RERANKER_HEARTBEAT_LIVENESS": "3",
    # A compose recreate of every worker leaves none connected for as long as new containers take to
    # start (tens of seconds on vfs): requests wait that long (docs/deployment.md, Scaling).
    "RERANKER_NO_WORKER_GRACE": "45",
    "RERANKER_REQUEST_TIMEOUT": "60",
    "HEALTHCHECK_INTERVAL": "2s",
    # The stub and torch workers of these tests need only the worker extra: a smaller image, quicker to
    # build and to copy per container (the default image adds onnx and openvino for the fast modes).
    "WORKER_EXTRAS": "worker",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    run_id = f"rrk{uuid.uuid4().hex[:8]}"
    network = f"{run_id}_wdoi_internal"
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**STUB_ENV, "RERANKER_NETWORK": network,
                                                             "RERANKER_IMAGE_TAG": run_id}.items()))
    s = Stack(run_id, network, env_file, base_image())
    try:
        s.timed("build", lambda: s.compose("build", timeout=1800))
        for title in ("reranker-gateway", "reranker-worker"):  # what rebuilds left behind, only ours
            docker("image", "prune", "-f", "--filter", f"label=org.opencontainers.image.title={title}",
                   check=False)
        docker("network", "create", "--label", f"reranker-test={run_id}", network)
        s.timed("client", s.start_client)
        s.timed("up", lambda: s.compose("up", "-d"))
        yield s
    finally:
        s.timed("down", s.destroy)
        print(f"\ndocker test timings (s): {s.timings}")


def worker_hosts(s: Stack) -> set[str]:
    return s.hostnames("worker")


@pytest.mark.docker
def test_three_replicas_ready_healthy_and_each_serves(stack):
    hosts = worker_hosts(stack)
    assert len(hosts) == 3, "WORKER_REPLICAS=3 (deploy.replicas) gives 3 containers"
    before = stack.timed("ready3", lambda: stack.wait_workers(3, timeout=180, hosts=hosts))
    assert all(w["jobs"] == 0 for w in before["pool"])
    summary = stack.load(requests=60, concurrency=6, sentences=6)
    assert summary["failed"] == 0 and summary["ok"] == 60, summary
    pool = stack.ready()["pool"]
    assert {w["host"] for w in pool} == hosts
    assert all(w["jobs"] > 0 for w in pool), f"every replica must serve: {pool}"
    assert sum(w["pairs"] for w in pool) >= 60 * 6
    # The healthcheck passes for connected workers.
    wait_for(lambda: all(stack.inspect(c)["State"]["Health"]["Status"] == "healthy"
                         for c in stack.containers("worker") + stack.containers("gateway")),
             60, "healthy containers", interval=1, diagnose=stack.diagnose)


@pytest.mark.docker
def test_worker_killed_under_load_loses_no_request(stack):
    stack.compose("up", "-d", "--scale", "worker=3")
    stack.wait_workers(3)
    with stack.background_load(concurrency=4) as load:
        time.sleep(3)
        victim = random.choice(stack.containers("worker"))
        docker("kill", victim)
        time.sleep(6)  # the broker notices after 1.5 s and re-dispatches the lost work
        summary = load.stop()
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 20, summary
    assert victim not in stack.containers("worker")
    # `docker kill` counts as a manual stop: no restart policy brings it back, `up` does.
    stack.compose("up", "-d", "--scale", "worker=3")
    stack.wait_workers(3, timeout=60)


@pytest.mark.docker
def test_gateway_restart_workers_reconnect_by_themselves(stack):
    stack.wait_workers(3)
    workers = {c: stack.inspect(c)["State"]["StartedAt"] for c in stack.containers("worker")}
    one = next(iter(workers))
    (gateway,) = stack.containers("gateway")
    stack.timed("gateway_stop", lambda: docker("stop", gateway))
    # The worker healthcheck reflects the real state: no broker, not healthy.
    wait_for(lambda: docker("exec", one, "python", "-m", "worker.health", check=False).returncode == 1,
             20, "worker.health to fail while the gateway is down", diagnose=stack.diagnose)
    docker("start", gateway)
    stack.timed("reconnect", lambda: stack.wait_workers(3, timeout=90))
    after = {c: stack.inspect(c)["State"]["StartedAt"] for c in stack.containers("worker")}
    assert after == workers, "the same worker containers, not restarted: they reconnected by themselves"
    # Healthy again once reconnected (a worker in its reconnect back-off may take a few seconds more).
    for c in workers:
        wait_for(lambda: docker("exec", c, "python", "-m", "worker.health", check=False).returncode == 0,
                 60, f"worker.health to pass again in {c[:12]}", diagnose=stack.diagnose)
    stack.wait_workers(3, hosts=worker_hosts(stack))
    summary = stack.load(requests=30, concurrency=4)
    assert summary["failed"] == 0 and summary["ok"] == 30, summary


@pytest.mark.docker
def test_scale_to_five_and_back_to_one_under_load(stack):
    stack.wait_workers(3)
    # More requests in flight than workers: the broker prefers workers that have answered a job, so a
    # new one gets work when every proven one is busy.
    with stack.background_load(concurrency=8) as load:
        time.sleep(2)
        stack.timed("scale5", lambda: stack.compose("up", "-d", "--scale", "worker=5"))
        hosts = worker_hosts(stack)
        assert len(hosts) == 5
        stack.wait_workers(5, hosts=hosts)
        pool = wait_for(lambda: (lambda b: b if all(w["jobs"] > 0 for w in b.get("pool", [])) else None)(
            stack.ready()), 60, "all 5 workers to serve", interval=1, diagnose=stack.diagnose)["pool"]
        assert len(pool) == 5
        stack.timed("scale1", lambda: stack.compose("up", "-d", "--scale", "worker=1"))
        assert len(stack.containers("worker")) == 1
        stack.wait_workers(1, hosts=worker_hosts(stack))
        time.sleep(3)
        summary = load.stop()
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 30, summary
    assert len(stack.containers("gateway")) == 1


@pytest.mark.docker
def test_rolling_worker_update_under_load_loses_no_request(stack):
    """`docker compose up -d --no-deps worker` after a change of the workers' configuration recreates
    every worker while requests run: each old one finishes its job on SIGTERM and says DISCONNECT;
    requests wait in the broker's queue for the new ones (RERANKER_NO_WORKER_GRACE) rather than fail."""
    stack.compose("up", "-d", "--scale", "worker=3")
    old = worker_hosts(stack)
    stack.wait_workers(3, hosts=old)
    with stack.background_load(concurrency=4) as load:
        time.sleep(3)
        # A new value for a worker knob: compose recreates the worker containers, and only those.
        stack.timed("rolling", lambda: stack.compose("up", "-d", "--no-deps", "worker", RERANKER_STUB_DELAY_MS="16"))
        new = worker_hosts(stack)
        assert len(new) == 3 and not new & old, (old, new)
        stack.wait_workers(3, hosts=new)
        time.sleep(3)
        summary = load.stop()
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 20, summary
    assert len(stack.containers("gateway")) == 1


@pytest.mark.docker
def test_torch_backend_on_tiny_local_model_matches_in_process(stack):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    from devkit.models import build_model, sample_text

    # Readable by the image's user (uid 10001): not pytest's 0700 tmp_path.
    model_dir = Path(tempfile.mkdtemp(prefix=f"{stack.project}-model-"))
    try:
        model_dir.chmod(0o755)
        build_model(model_dir, "tiny")
        for p in model_dir.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        env = {"RERANKER_BACKEND": "torch", "RERANKER_MODEL_DIR": str(model_dir), "WORKER_MEMORY": "2g"}
        files = ("docker-compose.yml", "deploy/compose/local-model.yml")
        # One replica: on vfs every worker container costs a 1.5 GB copy to create and to remove,
        # and the stub phases above already cover several replicas.
        stack.timed("torch_up", lambda: stack.compose("up", "-d", "--scale", "worker=1", files=files, **env))
        hosts = worker_hosts(stack)
        assert len(hosts) == 1
        stack.timed("torch_ready", lambda: stack.wait_workers(1, timeout=240, hosts=hosts))

        rng = random.Random(7)
        requests = []
        # Requests under RERANKER_MIN_SPLIT_PAIRS (16) are one job each: padded as one batch,
        # like predict's, so within 1e-5 (split jobs pad differently).
        for n in (3, 10, 15):
            sentences = [sample_text(rng, rng.randint(1, 50)) for _ in range(n)]
            requests.append({"query": sample_text(rng, 8), "sentences": sentences,
                             "ids": [100 * n + i for i in range(n)]})
        responses = stack.post(requests)

        reference = st.CrossEncoder(str(model_dir), device="cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the workers (NUM_THREADS=1)
        try:
            for req, res in zip(requests, responses):
                assert res["status"] == 200, res
                results = json.loads(res["body"])["results"]
                expected = reference.predict([(req["query"], s) for s in req["sentences"]],
                                             show_progress_bar=False)
                got = {r["id"]: r["score"] for r in results}
                diff = max(abs(got[i] - float(e)) for i, e in zip(req["ids"], expected))
                assert diff <= 1e-5, f"max |container - in-process| = {diff}"
                print(f"torch worker vs in-process CrossEncoder, {len(req['ids'])} pairs: max |diff| = {diff:.2e}")
                assert [r["score"] for r in results] == sorted(got.values(), reverse=True)
        finally:
            torch.set_num_threads(threads)
        (worker,) = stack.ready()["pool"]
        assert worker["host"] in hosts and worker["pairs"] == sum(len(r["ids"]) for r in requests), worker
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
