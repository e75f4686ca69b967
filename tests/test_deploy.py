"""The Kubernetes manifests under deploy/k8s: schema and consistency checks, no cluster needed.

Each object is checked against a schema of the fields we rely on (a subset of the
Kubernetes OpenAPI: required fields, types, enums, name formats), by `jsonschema`
where it is installed and by the small validator below otherwise; then the objects
are checked against each other and against the service's settings: selectors match
pod labels, Services reach declared ports, the workers' broker URL names the broker
Service, the HPA targets the worker Deployment, CPU requests match NUM_THREADS.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import options

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"        # most object names (<= 63)
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"           # Service names (<= 63)
SETTINGS_VARS = {o.env for o in options()}
OTHER_VARS = {"HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"}

# -- schemas (JSON Schema subset) -----------------------------------------------------

STR = {"type": "string"}
INT = {"type": "integer"}
QUANTITY = {"type": ["string", "integer", "number"]}
LABELS = {"type": "object", "additionalProperties": STR}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS1123_LABEL, "maxLength": 63}, "labels": LABELS}}
SELECTOR = {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": LABELS}}
PORT_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15}
PORT_REF = {"type": ["string", "integer"]}
PROBE = {
    "type": "object",
    "properties": {
        "httpGet": {"type": "object", "required": ["port"], "properties": {"path": STR, "port": PORT_REF}},
        "exec": {"type": "object", "required": ["command"], "properties": {"command": {"type": "array", "items": STR}}},
        "tcpSocket": {"type": "object", "required": ["port"], "properties": {"port": PORT_REF}},
        "periodSeconds": INT, "timeoutSeconds": INT, "failureThreshold": INT, "initialDelaySeconds": INT,
    },
}
RESOURCES = {
    "type": "object", "required": ["requests", "limits"],
    "properties": {
        "requests": {"type": "object", "required": ["cpu", "memory"], "properties": {"cpu": QUANTITY, "memory": QUANTITY}},
        "limits": {"type": "object", "required": ["memory"], "properties": {"cpu": QUANTITY, "memory": QUANTITY}},
    },
}
CONTAINER = {
    "type": "object", "required": ["name", "image", "resources"],
    "properties": {
        "name": {"type": "string", "pattern": DNS1123_LABEL},
        "image": STR,
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": STR},
        "args": {"type": "array", "items": STR},
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["containerPort"],
            "properties": {"name": PORT_NAME, "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                           "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}},
        "env": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                           "value": STR}}},   # values must be strings: "2", not 2
        "resources": RESOURCES,
        "readinessProbe": PROBE, "livenessProbe": PROBE, "startupProbe": PROBE,
        "securityContext": {"type": "object", "properties": {
            "allowPrivilegeEscalation": {"type": "boolean"}, "readOnlyRootFilesystem": {"type": "boolean"}}},
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
    },
}
POD_SPEC = {
    "type": "object", "required": ["containers"],
    "properties": {
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "securityContext": {"type": "object", "properties": {
            "runAsNonRoot": {"type": "boolean"}, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT}},
        "terminationGracePeriodSeconds": INT,
        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}
SCHEMAS = {
    ("apps/v1", "Deployment"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": METADATA,
            "spec": {
                "type": "object", "required": ["selector", "template"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "selector": SELECTOR,
                    "strategy": {"type": "object", "properties": {"type": {"enum": ["Recreate", "RollingUpdate"]}}},
                    "template": {"type": "object", "required": ["metadata", "spec"],
                                 "properties": {"metadata": {"type": "object", "required": ["labels"],
                                                             "properties": {"labels": LABELS}},
                                                "spec": POD_SPEC}},
                },
            },
        },
    },
    ("v1", "Service"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {**METADATA, "properties": {**METADATA["properties"],
                                                     "name": {"type": "string", "pattern": DNS1035_LABEL,
                                                              "maxLength": 63}}},
            "spec": {"type": "object", "required": ["selector", "ports"], "properties": {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                "selector": LABELS,
                "ports": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"],
                    "properties": {"name": PORT_NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                   "targetPort": PORT_REF, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}},
            }},
        },
    },
    ("autoscaling/v2", "HorizontalPodAutoscaler"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": METADATA,
            "spec": {"type": "object", "required": ["scaleTargetRef", "maxReplicas"], "properties": {
                "scaleTargetRef": {"type": "object", "required": ["apiVersion", "kind", "name"]},
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "metrics": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["Resource", "Pods", "Object", "External", "ContainerResource"]},
                                   "resource": {"type": "object", "required": ["name", "target"], "properties": {
                                       "name": STR,
                                       "target": {"type": "object", "required": ["type"], "properties": {
                                           "type": {"enum": ["Utilization", "Value", "AverageValue"]},
                                           "averageUtilization": {"type": "integer", "minimum": 1}}}}}}}},
            }},
        },
    },
    ("networking.k8s.io/v1", "NetworkPolicy"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": METADATA, "spec": {"type": "object", "required": ["podSelector"], "properties": {
            "podSelector": {"type": "object"},
            "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
            "ingress": {"type": "array", "items": {"type": "object"}}}}},
    },
}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """The JSON Schema keywords used above: type, required, properties, additionalProperties,
    items, enum, pattern, minimum, maximum, maxLength, minItems."""
    errors = []
    types = schema.get("type")
    if types is not None:
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
        allowed = [types] if isinstance(types, str) else types
        ok = any(isinstance(instance, pytypes[t]) and not (t in ("integer", "number") and isinstance(instance, bool))
                 for t in allowed)
        if not ok:
            return [f"{path}: expected {types}, got {type(instance).__name__} {instance!r}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} < {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} > {schema['maximum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required field {key!r}")
        for key, value in instance.items():
            if key in schema.get("properties", {}):
                errors += validate(value, schema["properties"][key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(value, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


# -- loading ------------------------------------------------------------------------

def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> list[dict]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str, name: str) -> dict:
    found = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def cpu_cores(quantity) -> float:
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- tests --------------------------------------------------------------------------

def test_every_object_matches_its_schema():
    objs = objects()
    assert objs, "no manifests under deploy/k8s"
    for obj in objs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        assert key in SCHEMAS, f"unexpected {key} in deploy/k8s"
        errors = validate(obj, SCHEMAS[key])
        assert not errors, f"{key[1]} {obj.get('metadata', {}).get('name')}:\n" + "\n".join(errors)


def test_schemas_with_jsonschema_where_installed():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed; the built-in validator ran")
    for obj in objects():
        jsonschema.validate(obj, SCHEMAS[(obj["apiVersion"], obj["kind"])])


def test_validator_catches_errors():
    """The built-in validator is not vacuous: broken objects fail."""
    good = one("Deployment", "cross-encoder-worker")
    assert validate(good, SCHEMAS[("apps/v1", "Deployment")]) == []
    bad = yaml.safe_load(yaml.safe_dump(good))
    del bad["spec"]["selector"]
    bad["metadata"]["name"] = "cross_encoder"
    container(bad)["env"][0]["value"] = 2
    del container(bad)["resources"]["requests"]
    errors = "\n".join(validate(bad, SCHEMAS[("apps/v1", "Deployment")]))
    for needle in ("missing required field 'selector'", "cross_encoder", "expected string", "'requests'"):
        assert needle in errors


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == [p.name for p in manifest_files()]
    images = {i["name"] for i in k.get("images", [])}
    used = {container(o)["image"].split(":")[0] for o in objects() if o["kind"] == "Deployment"}
    assert used <= images, "every image can be pointed at a registry from kustomization.yaml"


def test_deployments_select_their_pods_and_run_as_non_root():
    for d in (o for o in objects() if o["kind"] == "Deployment"):
        spec = d["spec"]
        assert selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]), d["metadata"]["name"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        c = container(d)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        unknown = set(env_of(c)) - SETTINGS_VARS - OTHER_VARS
        assert not unknown, f"{d['metadata']['name']}: unknown variables {unknown}"
        # Settings only where the container's program reads them (declared in shared/settings.py).
        read_here = {o.env for o in options(c["name"])}
        unread = (set(env_of(c)) & SETTINGS_VARS) - read_here
        assert not unread, f"{d['metadata']['name']}: {unread} are not read by the {c['name']} program"
        names = {p.get("name") for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str):
                assert port in names, f"{probe} names an undeclared port {port}"
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in pod.get("volumes", [])}


def test_gateway_is_one_broker_behind_the_cross_encoder_service():
    gw = one("Deployment", "cross-encoder-gateway")
    assert gw["spec"]["replicas"] == 1 and gw["spec"]["strategy"]["type"] == "Recreate"
    c = container(gw)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = env_of(c)
    assert ports["http"] == int(env.get("PORT", "8300"))
    assert env["RERANKER_WORKERS_BIND"].rsplit(":", 1)[1] == str(ports["broker"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    svc = one("Service", "cross-encoder")
    pod_labels = gw["spec"]["template"]["metadata"]["labels"]
    assert selects(svc["spec"]["selector"], pod_labels)
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 8300 and port["targetPort"] in ("http", 8300)
    # No worker pod is selected by the client Service.
    worker = one("Deployment", "cross-encoder-worker")
    assert not selects(svc["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])


def test_workers_reach_the_broker_service():
    worker = one("Deployment", "cross-encoder-worker")
    gw = one("Deployment", "cross-encoder-gateway")
    url = env_of(container(worker))["RERANKER_BROKER_URL"]
    m = re.fullmatch(r"tcp://([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", url)
    assert m, url
    svc = one("Service", m.group(1))
    assert selects(svc["spec"]["selector"], gw["spec"]["template"]["metadata"]["labels"])
    port = next(p for p in svc["spec"]["ports"] if p["port"] == int(m.group(2)))
    gw_ports = {p["name"]: p["containerPort"] for p in container(gw)["ports"]}
    target = port.get("targetPort", port["port"])
    assert gw_ports.get(target, target) == int(env_of(container(gw))["RERANKER_WORKERS_BIND"].rsplit(":", 1)[1])
    # Both sides agree on heartbeats.
    for var in ("RERANKER_HEARTBEAT_INTERVAL", "RERANKER_HEARTBEAT_LIVENESS"):
        assert env_of(container(worker)).get(var) == env_of(container(gw)).get(var), var


def test_worker_cpu_matches_num_threads_and_health_probes():
    worker = one("Deployment", "cross-encoder-worker")
    c = container(worker)
    threads = int(env_of(c)["NUM_THREADS"])
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert cpu_cores(requests["cpu"]) == threads, "the CPU request must equal NUM_THREADS"
    assert cpu_cores(limits["cpu"]) == threads, "the CPU limit must equal NUM_THREADS (no throttled threads)"
    assert worker["spec"]["replicas"] >= 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][-2:] == ["-m", "worker.health"], probe
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env_of(c).get("HF_HOME", "/cache/huggingface") in mounts
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts, "the health file and tokenizer temp files need a writable /tmp"


def test_hpa_scales_the_worker_deployment_on_cpu():
    hpa = one("HorizontalPodAutoscaler", "cross-encoder-worker")
    ref = hpa["spec"]["scaleTargetRef"]
    target = one(ref["kind"], ref["name"])
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    assert container(target)["name"] == "worker"
    assert 1 <= hpa["spec"]["minReplicas"] <= target["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in container(target)["resources"]["requests"], "utilization is relative to the request"


def test_network_policy_keeps_the_broker_port_to_workers():
    gw = one("Deployment", "cross-encoder-gateway")
    worker = one("Deployment", "cross-encoder-worker")
    (policy,) = [o for o in objects() if o["kind"] == "NetworkPolicy"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], gw["spec"]["template"]["metadata"]["labels"])
    assert "Ingress" in policy["spec"]["policyTypes"]
    broker_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == 5555 for p in r.get("ports", []))]
    assert broker_rules and all(r.get("from") for r in broker_rules), "5555 must not be open to everyone"
    for rule in broker_rules:
        for peer in rule["from"]:
            assert selects(peer["podSelector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"])
    http_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == 8300 for p in r.get("ports", []))]
    assert http_rules, "clients must still reach 8300"


def test_containers_run_read_only_with_no_capabilities():
    for d in (o for o in objects() if o["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], "a writable /tmp (ipc socket, health file)"


# -- the CURVE component (deploy/k8s/curve) -----------------------------------------------------

CURVE = K8S / "curve"


def test_curve_component_mounts_the_keys_reranker_keys_writes(tmp_path):
    """Each CURVE setting names a file (or the directory) of a Secret volume mounted read-only, under
    the name `reranker keys` gives it, and only programs that read the setting get it."""
    from shared.curve import write_keys

    written = write_keys(tmp_path / "keys")
    component = yaml.safe_load((CURVE / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    patches = {doc["metadata"]["name"]: doc
               for doc in (yaml.safe_load((CURVE / p["path"]).read_text()) for p in component["patches"])}
    assert set(patches) == {"cross-encoder-gateway", "cross-encoder-worker"}
    for name, side in (("cross-encoder-gateway", "broker"), ("cross-encoder-worker", "worker")):
        patch = patches[name]
        c = container(patch)
        assert c["name"] == container(one("Deployment", name))["name"]
        secrets = {v["name"]: v["secret"] for v in patch["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        env = env_of(c)
        assert set(env) == set(written[side]) and set(env) <= {o.env for o in options(c["name"])}
        for variable, path in written[side].items():
            value = env[variable]
            mount = mounts.get(value) or mounts[value.rsplit("/", 1)[0]]  # the directory, or a file in it
            assert mount["readOnly"] is True and mount["name"] in secrets
            if value not in mounts:
                assert value.rsplit("/", 1)[1] == path.name, f"{variable}: the file reranker keys writes"


def test_curve_component_renders_with_kubectl(tmp_path):
    import os
    import shutil
    import subprocess

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    base = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{base}/curve]\n")
    proc = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for obj in rendered:
        assert not validate(obj, SCHEMAS[(obj["apiVersion"], obj["kind"])]), obj["metadata"]["name"]
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    for name in ("cross-encoder-gateway", "cross-encoder-worker"):
        c = container(deployments[name])
        curve = {k for k in env_of(c) if k.startswith("RERANKER_CURVE_")}
        assert len(curve) == 2, name
        assert c["securityContext"]["readOnlyRootFilesystem"] is True  # the base's context is kept
        mounted = {m["name"] for m in c["volumeMounts"]}
        assert {v["name"] for v in deployments[name]["spec"]["template"]["spec"]["volumes"]} >= mounted
