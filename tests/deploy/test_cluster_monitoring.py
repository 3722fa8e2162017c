"""Monitoring in the cluster: the generated PrometheusRule and dashboard ConfigMaps equal
their sources, both Prometheus configurations and the ServiceMonitors scrape the scarlet
pods, RabbitMQ and Redis as the manifests expose them (the pod-discovery relabelling is
played through here, since Debian's promtool cannot load Kubernetes discovery), and the
Redis exporter's ACL user, loaded into a real redis-server, reads metrics but no key."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from shared.config import ServiceSettings
from tests.conftest import require_tool
from tests.deploy.test_deploy import (
    DEPLOY,
    EXPORTER_USER,
    K8S,
    NAMESPACE,
    PROMETHEUS,
    _containers,
    _example_secrets,
    _may_connect,
    _name,
    _objs,
    _pod_labels,
    _resolve_port,
    _selects,
    _workloads,
    render,
    yaml,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
BUILDER = K8S / "components" / "build_monitoring.py"
BACKING_JOBS = {"rabbitmq": "rabbitmq", "rabbitmq-queues": "rabbitmq", "redis": "redis"}
QUEUE_FAMILIES = ["queue_coarse_metrics", "queue_consumer_count"]
APP = "app.kubernetes.io/name"
POD_IP = "10.0.0.7"


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_monitoring", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _vhost(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "/"


# ============================================================== generated from sources


def test_the_generated_files_are_exactly_what_the_builder_makes_of_their_sources():
    builder = _builder()
    for path, text in builder.expected().items():
        assert path.read_text() == text, f"{path} is stale: run python {builder.SCRIPT}"
    assert builder.main(["--check"]) == 0


def test_the_prometheus_rule_holds_the_groups_of_alerts_yml():
    objs = render("pool-keda+monitoring")
    (rule,) = _objs(objs, "PrometheusRule")
    assert (rule["apiVersion"], rule["metadata"]["namespace"]) == (
        "monitoring.coreos.com/v1",
        NAMESPACE,
    )
    alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert set(alerts) == {"groups"}
    assert rule["spec"] == {"groups": alerts["groups"]}
    assert [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]], "no alerts"


def test_the_dashboard_configmaps_carry_every_dashboard_for_grafanas_sidecar():
    objs = render("pool-keda+monitoring")
    sidecar = [c for c in _objs(objs, "ConfigMap")
               if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]  # fmt: skip
    carried: dict[str, str] = {}
    for config_map in sidecar:
        (key,) = config_map["data"]  # one dashboard each: no ConfigMap nears its size limit
        carried[key] = config_map["data"][key]
        assert len(json.dumps(config_map).encode()) < 256 * 1024, "too big to kubectl apply"
    files = {p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert files and carried == files
    uids = [json.loads(text)["uid"] for text in carried.values()]
    assert len(uids) == len(set(uids))


def test_the_builder_refuses_sources_it_cannot_carry_as_text():
    builder = _builder()
    with pytest.raises(builder.SourceError, match="top-level"):
        builder.prometheus_rule("groups: []\nrule_files: [x.yml]\n")
    with pytest.raises(builder.SourceError, match="trailing whitespace"):
        builder.dashboard_config_maps({"a.json": '{"uid": "a", \n "x": 1}\n'})
    with pytest.raises(builder.SourceError, match="one newline"):
        builder.dashboard_config_maps({"a.json": '{"uid": "a"}'})
    with pytest.raises(ValueError):
        builder.dashboard_config_maps({"a.json": "{not json}\n"})


def test_a_rule_file_with_comments_and_blocks_survives_the_round_trip():
    builder = _builder()
    source = (
        "# header\ngroups:\n  - name: g\n    rules:\n      # why\n      - alert: A\n"
        "        expr: |\n          up\n\n            > 0\n        annotations:\n"
        "          description: >-\n            two\n            lines\n"
    )
    out = yaml.safe_load(builder.prometheus_rule(source))
    assert out["spec"] == yaml.safe_load(source)


# ============================================================ Kubernetes pod discovery


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _pod_targets(workload: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The targets Prometheus' pod discovery makes of one pod of ``workload``: one per
    declared container port, one without a port for a container that declares none."""
    template = workload["spec"]["template"]["metadata"]
    meta = {
        "__meta_kubernetes_namespace": workload["metadata"]["namespace"],
        "__meta_kubernetes_pod_name": f"{_name(workload)}-0",
        "__meta_kubernetes_pod_phase": "Running",
    }
    for key, value in template.get("labels", {}).items():
        meta[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
    for key, value in template.get("annotations", {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = value
    for container in _containers(workload):
        ports = container.get("ports") or [None]
        for port in ports:
            target = {**meta, "__meta_kubernetes_pod_container_name": container["name"]}
            target["__address__"] = POD_IP
            if port is not None:
                target["__address__"] += f":{port['containerPort']}"
                target["__meta_kubernetes_pod_container_port_number"] = str(port["containerPort"])
                target["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
            yield target


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabel_configs over ``labels`` (None: the target is dropped)."""
    out = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        value = config.get("separator", ";").join(
            out.get(name, "") for name in config.get("source_labels", [])
        )
        match = re.fullmatch(config.get("regex", "(.*)"), value)  # Prometheus anchors it
        if action == "keep" and match is None or action == "drop" and match is not None:
            return None
        if action == "replace" and match is not None:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", config.get("replacement", "$1"))
            new = match.expand(replacement)
            if new:
                out[config["target_label"]] = new
            else:
                out.pop(config["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            raise AssertionError(f"relabel action {action} is not played here")
    return out


def _discovered(config: dict[str, Any], objs: list[dict[str, Any]]) -> dict[str, set[Any]]:
    """job -> the distinct targets (workload name, address, final labels) it scrapes."""
    found: dict[str, set[Any]] = {}
    for job in config["scrape_configs"]:
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
        (sd,) = job["kubernetes_sd_configs"]
        found[job["job_name"]] = set()
        for workload in _workloads(objs):
            if workload["metadata"]["namespace"] not in sd["namespaces"]["names"]:
                continue
            for target in _pod_targets(workload):
                labels = _relabel(target, job.get("relabel_configs", []))
                if labels is None:
                    continue
                public = {k: v for k, v in labels.items() if not k.startswith("__")}
                # Prometheus keeps one of targets whose labels end up identical
                found[job["job_name"]].add(
                    (_name(workload), labels["__address__"], frozenset(public.items()))
                )
    return found


def _kubernetes_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())  # type: ignore[no-any-return]


def _workload_of(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (workload,) = [w for w in _workloads(objs) if _name(w) == name]
    return workload


def _annotated_port(workload: dict[str, Any]) -> int:
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true", _name(workload)
    port = int(annotations["prometheus.io/port"])
    assert any(_resolve_port(port, c) for c in _containers(workload)), "no such container port"
    return port


@pytest.mark.parametrize("name", ["pool-keda", "pool-hpa", "pinned"])
def test_pod_discovery_finds_every_scarlet_pod_and_each_backing_service_once(name):
    objs = render(name) + render("backing")
    found = _discovered(_kubernetes_config(), objs)
    # the scarlet job: every scarlet pod once, on its metrics port, labelled by component
    scarlet = [w for w in _workloads(objs) if _pod_labels(w)[APP] == "scarlet-fd"]
    assert sorted(t[0] for t in found["scarlet"]) == sorted(_name(w) for w in scarlet)
    for workload_name, address, labels in found["scarlet"]:
        workload = _workload_of(objs, workload_name)
        assert address.endswith(f":{_annotated_port(workload)}")
        assert dict(labels)["service"] == _pod_labels(workload)["app.kubernetes.io/component"]
    # the backing jobs: each its service's one pod, on the port its annotation names
    for job, app in BACKING_JOBS.items():
        ((workload_name, address, labels),) = found[job]
        workload = _workload_of(objs, workload_name)
        assert _pod_labels(workload)[APP] == app, job
        port = _annotated_port(workload)
        assert address == f"{POD_IP}:{port}", job
        assert "service" not in dict(labels), f"{job}: `service` is the scarlet processes'"
        # and the NetworkPolicy lets Prometheus in on that port
        assert _may_connect(objs, PROMETHEUS, workload, port), job
    assert found["rabbitmq"] != set() and found["redis"] != set()


def test_the_scrape_ports_are_the_metrics_ports_of_rabbitmq_and_the_exporter():
    objs = render("backing")
    rabbitmq = _workload_of(objs, "scarlet-rabbitmq")
    (prometheus_port,) = [p for c in _containers(rabbitmq) for p in c["ports"]
                          if p["name"] == "prometheus"]  # fmt: skip
    assert _annotated_port(rabbitmq) == prometheus_port["containerPort"] == 15692
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in plugins  # what serves :15692
    redis = _workload_of(objs, "scarlet-redis")
    (exporter,) = [c for c in _containers(redis) if "redis_exporter" in c["image"]]
    (metrics,) = exporter["ports"]
    assert _annotated_port(redis) == metrics["containerPort"]


def test_the_queue_job_reads_the_federations_vhost():
    jobs = {j["job_name"]: j for j in _kubernetes_config()["scrape_configs"]}
    queues = jobs["rabbitmq-queues"]
    assert queues["metrics_path"] == "/metrics/detailed"
    config = (K8S / "base" / "config.toml").read_text()
    (broker_url,) = re.findall(r'^broker_url = "([^"]+)"', config, re.M)
    assert queues["params"] == {"vhost": [_vhost(broker_url)], "family": QUEUE_FAMILIES}
    assert _vhost(broker_url) == "scarlet"


def test_the_relabel_player_drops_what_prometheus_would_drop():
    # Given: the rabbitmq job, a broker pod whose scrape annotation is off, and a Pending pod
    objs = copy.deepcopy(render("backing"))
    rabbitmq = _workload_of(objs, "scarlet-rabbitmq")
    rabbitmq["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    # Then: nothing is found, while the unchanged Redis still is
    found = _discovered(_kubernetes_config(), objs)
    assert found["rabbitmq"] == set() and found["rabbitmq-queues"] == set()
    assert len(found["redis"]) == 1
    (target, *_) = _pod_targets(_workload_of(objs, "scarlet-redis"))
    target["__meta_kubernetes_pod_phase"] = "Pending"
    (redis_job,) = [j for j in _kubernetes_config()["scrape_configs"] if j["job_name"] == "redis"]
    assert _relabel(target, redis_job["relabel_configs"]) is None


# ===================================================== the local Prometheus, the operator


def test_the_local_prometheus_scrapes_the_local_broker_and_redis():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = {
        name: [t for group in jobs[name]["static_configs"] for t in group["targets"]]
        for name in BACKING_JOBS
    }
    assert targets == {
        "rabbitmq": ["127.0.0.1:15692"],
        "rabbitmq-queues": ["127.0.0.1:15692"],
        "redis": ["127.0.0.1:9121"],
    }
    # the default vhost of the services' default broker_url
    default_url = ServiceSettings.model_fields["broker_url"].default
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    assert jobs["rabbitmq-queues"]["params"] == {
        "vhost": [_vhost(default_url)],
        "family": QUEUE_FAMILIES,
    }


def test_the_backing_servicemonitors_scrape_what_the_plain_configuration_does():
    objs = render("backing+servicemonitor")
    jobs = {j["job_name"]: j for j in _kubernetes_config()["scrape_configs"]}
    seen = set()
    for monitor in _objs(objs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]
        services = _objs(objs, "Service")
        (service,) = [s for s in services if _selects(selector, s["metadata"]["labels"])]
        pods = {"matchLabels": service["spec"]["selector"]}
        (workload,) = [w for w in _workloads(objs) if _selects(pods, _pod_labels(w))]
        for endpoint in monitor["spec"]["endpoints"]:
            (job,) = [r["replacement"] for r in endpoint["relabelings"]
                      if r["targetLabel"] == "job"]  # fmt: skip
            seen.add(job)
            plain = jobs[job]
            assert endpoint["path"] == plain.get("metrics_path", "/metrics"), job
            assert endpoint.get("params") == plain.get("params"), job
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
            target = next(_resolve_port(port["targetPort"], c) for c in _containers(workload)
                          if _resolve_port(port["targetPort"], c))  # fmt: skip
            assert target == _annotated_port(workload), job
    assert seen == set(BACKING_JOBS)


# =========================================================================== the exporter


def _exporter() -> dict[str, Any]:
    redis = _workload_of(render("backing"), "scarlet-redis")
    (exporter,) = [c for c in _containers(redis) if "redis_exporter" in c["image"]]
    return exporter


def _acl_lines() -> dict[str, list[str]]:
    lines = _example_secrets()["scarlet-redis"]["users.acl"].splitlines()
    return {w[1]: w[2:] for w in (line.split() for line in lines) if w and w[0] == "user"}


def test_the_exporter_is_pinned_and_logs_in_as_its_own_user():
    exporter = _exporter()
    # a pinned release, never a moving tag
    assert re.fullmatch(r"docker\.io/oliver006/redis_exporter:v\d+\.\d+\.\d+", exporter["image"])
    env = {v["name"]: v for v in exporter["env"]}
    assert env["REDIS_USER"]["value"] == EXPORTER_USER
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    # the Secret the Redis pod already mounts, and the password of the user's ACL line
    assert ref["name"] == "scarlet-redis"
    password = _example_secrets()["scarlet-redis"][ref["key"]]
    assert f">{password}" in _acl_lines()[EXPORTER_USER]
    # the Redis of its own pod, on the port Redis listens on; no CONFIG GET *
    redis = _workload_of(render("backing"), "scarlet-redis")
    (server,) = [c for c in _containers(redis) if c is not exporter and c["name"] == "redis"]
    address = urlsplit(env["REDIS_ADDR"]["value"])
    assert address.hostname == "localhost"
    assert address.port == _resolve_port("redis", server) == 6379
    assert env["REDIS_EXPORTER_CONFIG_COMMAND"]["value"] == "-"
    assert env["REDIS_EXPORTER_WEB_LISTEN_ADDRESS"]["value"] == f":{_annotated_port(redis)}"


# What redis_exporter sends on each scrape without CONFIG (its exporter.go, latency.go,
# slowlog.go); SLOWLOG GET and COMMAND INFO are refused and it goes on without them.
EXPORTER_COMMANDS = [
    ("CLIENT", "SETNAME", "redis_exporter"),
    ("INFO", "ALL"),
    ("INFO",),
    ("LATENCY", "LATEST"),
    ("LATENCY", "HISTOGRAM"),
    ("SLOWLOG", "LEN"),
    ("PING",),
]
REFUSED = [
    ("GET", "scarlet:fashion-k8s:cache:meta"),
    ("HGETALL", "scarlet:fashion-k8s:round:3:uploads"),
    ("SET", "scarlet:fashion-k8s:aggregator", "x"),
    ("SCAN", "0"),
    ("KEYS", "*"),
    ("DBSIZE",),
    ("CONFIG", "GET", "*"),
    ("SLOWLOG", "GET", "1"),  # its entries carry the arguments of slow commands
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "127.0.0.1:1"),
    ("ACL", "LIST"),
    ("FLUSHALL",),
    ("SUBSCRIBE", "scarlet"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    """A private redis-server loading the example Secret's users.acl; yields its port."""
    server = require_tool("redis-server", "apt-get install redis-server")
    acl = tmp_path / "users.acl"
    acl.write_text(_example_secrets()["scarlet-redis"]["users.acl"])
    port = _free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--aclfile", str(acl)]  # fmt: skip
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server refused the example users.acl:\n{log.read_text()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_every_user_of_the_example_acl_logs_in_and_the_exporter_reads_no_data(acl_redis):
    redis = pytest.importorskip("redis")
    secrets = _example_secrets()
    passwords = {EXPORTER_USER: secrets["scarlet-redis"]["exporter-password"]}
    for name in ("scarlet-aggregator", "scarlet-cache", "scarlet-pool"):
        for key in ("redis-url", "state-url"):
            if key in secrets[name]:
                url = urlsplit(secrets[name][key])
                passwords[url.username or ""] = unquote(url.password or "")
    assert set(passwords) == set(_acl_lines()) - {"default"}
    for user, password in passwords.items():
        client = redis.Redis(port=acl_redis, username=user, password=password)
        assert client.ping(), user
        client.close()
    # Given: some federation state written by the aggregator
    owner = urlsplit(secrets["scarlet-aggregator"]["redis-url"])
    writer = redis.Redis(port=acl_redis, username=owner.username, password=owner.password)
    writer.set("scarlet:fashion-k8s:cache:meta", "v1")
    writer.close()
    # When / Then: the exporter runs what it needs and is refused the rest
    exporter = redis.Redis(port=acl_redis, username=EXPORTER_USER,
                           password=passwords[EXPORTER_USER])  # fmt: skip
    for command in EXPORTER_COMMANDS:
        exporter.execute_command(*command)
    assert "used_memory" in exporter.info("all")
    for command in REFUSED:
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.execute_command(*command)
    exporter.close()
    # and the default user stays off
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis).ping()
