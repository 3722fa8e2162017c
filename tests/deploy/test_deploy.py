"""The deployment (deploy/) renders, validates and agrees with the code it deploys.

Every kustomization under ``deploy/`` is rendered: with ``kubectl kustomize`` when a
kubectl with kustomize v4+ is on PATH, else with the small renderer below, which knows the
kustomize features these manifests use (and is compared with kubectl where both exist).
The rendered objects are then checked three ways:

* core objects against the Kubernetes OpenAPI schemas, offline and strict (unknown fields
  are errors), with ``kubernetes-validate``; its absence is a failure in CI and a visible
  skip elsewhere, and the structural checks below run regardless;
* CRD objects (KEDA ``ScaledObject``/``TriggerAuthentication``, prometheus-operator
  ``ServiceMonitor``/``PrometheusRule``), for which no schema ships offline, structurally:
  apiVersion, kind, required and allowed fields, and the references between objects;
* against the code: every container runs one of the three services with arguments the
  service's own parser accepts, every ``SCARLET_*`` variable is a configuration key, the
  ConfigMap's TOML loads (with each container's environment and flags, as the service
  would), probes and Prometheus annotations hit the configured metrics port, the KEDA
  trigger watches ``routes.pool_tasks_queue(run_id)``, pinned workers are one per client;
* against the trust model (DESIGN §10): every role reads its own Secret only, no pinned
  worker is given Redis, every scarlet container runs the base's image tag, and the
  NetworkPolicies, evaluated here, let each role reach only what it needs.

Scaling (KEDA, the HPA overlay, PodDisruptionBudgets) is checked in ``test_scaling.py``,
the cluster's monitoring (PrometheusRule, dashboard ConfigMaps, scrape configurations,
the Redis exporter) in ``test_cluster_monitoring.py``; both use the renders of this file.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import flag_overrides, load_config
from shared.protocol import routes
from shared.security.roles import Identities, Role, redis_rules
from tests.conftest import running_in_ci

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
# the backing Redis' metrics exporter's ACL user (backing/redis.yaml, users.acl)
EXPORTER_USER = "scarlet-exporter"
RABBITMQ_CONF = DEPLOY / "rabbitmq" / "rabbitmq.conf"
NAMESPACE = "scarlet"
CONFIG_MAP = "scarlet-config"
CONFIG_KEY = "config.toml"
# Kubernetes versions the core objects are validated against: the oldest we support and
# the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "latest")
SERVICES = {
    "services.aggregator": {"run", "declare-topology", "check-config"},
    "services.worker": {"run", "check-config"},
    "services.cache": {"run", "check-config"},
}


def _need(module: str, why: str) -> Any:
    """Import ``module``; a missing one fails in CI and skips (with the reason) elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed ({why}); pip install it (dev extras)"
        if running_in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


yaml = _need("yaml", "PyYAML reads the manifests")


# ======================================================================================
# What is rendered
# ======================================================================================

MONITORING_COMPONENTS = ("servicemonitor", "prometheusrule", "grafana-dashboards")
# name -> (kustomization directory, components added on top, as an overlay would)
RENDERS: dict[str, tuple[Path, tuple[Path, ...]]] = {
    "base": (K8S / "base", ()),
    "pool-keda": (K8S / "overlays" / "pool-keda", ()),
    "pinned": (K8S / "overlays" / "pinned", ()),
    "pool-keda+servicemonitor": (
        K8S / "overlays" / "pool-keda",
        (K8S / "components" / "servicemonitor",),
    ),
    "pinned+servicemonitor": (
        K8S / "overlays" / "pinned",
        (K8S / "components" / "servicemonitor",),
    ),
    "pool-hpa": (K8S / "overlays" / "pool-hpa", ()),
    # everything a prometheus-operator and Grafana's sidecar take
    "pool-keda+monitoring": (
        K8S / "overlays" / "pool-keda",
        tuple(K8S / "components" / c for c in MONITORING_COMPONENTS),
    ),
    "backing": (K8S / "backing", ()),
    "backing+servicemonitor": (K8S / "backing", (K8S / "components" / "backing-servicemonitor",)),
    "rabbitmq": (DEPLOY / "rabbitmq", ()),
}
SCARLET_RENDERS = [name for name in RENDERS if not name.startswith(("backing", "rabbitmq"))]


def _kubectl() -> str | None:
    """kubectl, if it is there and its kustomize is v4 or newer (components, patches)."""
    exe = shutil.which("kubectl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        version = json.loads(out).get("kustomizeVersion", "")
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    match = re.match(r"v?(\d+)", version)
    return exe if match and int(match.group(1)) >= 4 else None


# SCARLET_TEST_RENDERER=python forces the fallback renderer (to test it where kubectl is)
KUBECTL = None if os.environ.get("SCARLET_TEST_RENDERER") == "python" else _kubectl()


@contextlib.contextmanager
def _kustomization_dir(name: str) -> Iterator[Path]:
    """The directory to build for render ``name`` (a temporary one adding components)."""
    directory, components = RENDERS[name]
    if not components:
        yield directory
        return
    with tempfile.TemporaryDirectory() as tmp:
        # kustomize resolves only relative paths; this is what an overlay listing the
        # component looks like (namespace included)
        spec = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": [os.path.relpath(directory, tmp)],
            "components": [os.path.relpath(c, tmp) for c in components],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(spec))
        yield Path(tmp)


@functools.cache
def _render_kubectl(name: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    with _kustomization_dir(name) as directory:
        done = subprocess.run(
            [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, f"kubectl kustomize {name} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


@functools.cache
def _render_python(name: str) -> tuple[dict[str, Any], ...]:
    with _kustomization_dir(name) as directory:
        return tuple(_kustomize(directory))


def render(name: str) -> list[dict[str, Any]]:
    """The objects of render ``name`` (a fresh deep copy: tests may modify it)."""
    objs = _render_kubectl(name) if KUBECTL else _render_python(name)
    return copy.deepcopy(list(objs))


# --------------------------------------------------------------------------------------
# A small kustomize: resources, components, configMapGenerator, patches (strategic merge
# and JSON 6902), namespace, images. Generated names get no hash suffix.
# --------------------------------------------------------------------------------------

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeClaimTemplates": None,
    "imagePullSecrets": "name",
}


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomize(root: Path, accumulated: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    objs = list(accumulated or [])
    for entry in spec.get("resources", []):
        path = root / entry
        objs += _kustomize(path) if path.is_dir() else _load_docs(path)
    for entry in spec.get("components", []):
        objs = _kustomize(root / entry, objs)
    for generator in spec.get("configMapGenerator", []):
        objs = _generate_config_map(root, generator, objs)
    for patch in spec.get("patches", []):
        objs = _apply_patch(root, patch, objs)
    if "namespace" in spec:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for obj in objs:
            for container in _containers(obj):
                _set_image(container, image)
    return objs


def _generate_config_map(
    root: Path, generator: dict[str, Any], objs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=")
        data[key or Path(path).name] = (root / path).read_text()
    for entry in generator.get("literals", []):
        key, _, value = entry.partition("=")
        data[key] = value
    behavior = generator.get("behavior", "create")
    if behavior in ("merge", "replace"):
        (target,) = [o for o in objs if o["kind"] == "ConfigMap" and _name(o) == generator["name"]]
        target["data"] = {**target.get("data", {}), **data} if behavior == "merge" else data
        return objs
    metadata: dict[str, Any] = {"name": generator["name"]}
    options = generator.get("options", {})
    for field in ("labels", "annotations"):
        if options.get(field):
            metadata[field] = dict(options[field])
    return [*objs, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}]


def _apply_patch(
    root: Path, patch: dict[str, Any], objs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    text = (root / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    target = patch.get("target")
    if target is None:
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
    out = []
    matched = False
    for obj in objs:
        if not _matches(obj, target):
            out.append(obj)
            continue
        matched = True
        if isinstance(body, list):
            out.append(_json6902(obj, body))
        elif body.get("$patch") == "delete":
            continue
        else:
            out.append(_strategic_merge(obj, body))
    assert matched, f"patch {patch} matches no object"
    return out


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {
        "kind": obj["kind"],
        "name": _name(obj),
        "group": group,
        "version": version,
        "namespace": obj["metadata"].get("namespace"),
    }
    return all(checks[k] == v for k, v in target.items() if k in checks)


def _strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _MERGE_KEYS.get(field)
        if field == "ports":
            key = "containerPort" if all("containerPort" in p for p in base) else "port"
        if key is None:
            return copy.deepcopy(patch)
        out, added = list(base), []
        for item in patch:
            index = next((i for i, b in enumerate(out) if b.get(key) == item.get(key)), None)
            if index is None:
                added.append(copy.deepcopy(item))
            else:
                out[index] = _strategic_merge(out[index], item, field)
        return added + out  # kustomize puts new list items first
    return copy.deepcopy(patch)


def _json6902(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")
        ]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "remove":
                del node[index]
            elif op["op"] == "add":
                node.insert(index, op["value"])
            else:
                node[index] = op["value"]
        elif op["op"] == "remove":
            del node[last]
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
            node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']}")
    return out


def _set_image(container: dict[str, Any], image: dict[str, Any]) -> None:
    name = re.split(r"[@:]", container["image"].rsplit("/", 1)[-1])[0]
    full = re.split(r"@|:(?=[^/]*$)", container["image"])[0]
    if image["name"] not in (full, name):
        return
    new = image.get("newName", full)
    if "digest" in image:
        container["image"] = f"{new}@{image['digest']}"
    elif "newTag" in image:
        container["image"] = f"{new}:{image['newTag']}"
    else:
        container["image"] = new + container["image"][len(full) :]


# ======================================================================================
# Helpers over rendered objects
# ======================================================================================


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _objs(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    return None


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if _pod_spec(o) is not None]


def _generated(name: str, base: str) -> bool:
    """``name`` is ConfigMap ``base``, with or without kustomize's hash suffix."""
    return name == base or re.fullmatch(re.escape(base) + r"-[a-z0-9]{10}", name) is not None


def _is_scarlet(container: dict[str, Any]) -> bool:
    return str(container["image"]).split("/")[-1].startswith("scarlet-fd")


def _scarlet_containers(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w in _workloads(objs) for c in _containers(w) if _is_scarlet(c)]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op, values = expr["operator"], expr.get("values", [])
        ok = {
            "In": present and value in values,
            "NotIn": not present or value not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def _resolve_port(port: int | str, container: dict[str, Any]) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


@functools.cache
def _example_secrets() -> dict[str, dict[str, str]]:
    """The example Secrets by name; the one of client 0 stands for every client's."""
    secrets = {}
    for doc in _load_docs(SECRET_EXAMPLE):
        assert doc["kind"] == "Secret"
        secrets[_name(doc)] = {**doc.get("data", {}), **doc.get("stringData", {})}
    clients = int(tomllib.loads((K8S / "base" / CONFIG_KEY).read_text())["clients"])
    client0 = secrets["scarlet-client-0"]
    for k in range(1, clients):
        secrets[f"scarlet-client-{k}"] = {
            key: value.replace("client-0", f"client-{k}") for key, value in client0.items()
        }
    return secrets


@functools.cache
def _image() -> tuple[list[str], list[str], str]:
    """ENTRYPOINT, CMD and USER of the image's final stage."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    final = re.split(r"^FROM\s", text, flags=re.M)[-1]
    entrypoint = re.findall(r"^ENTRYPOINT\s+(.+)$", final, re.M)
    cmd = re.findall(r"^CMD\s+(.+)$", final, re.M)
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert entrypoint and cmd and user, "the final stage needs ENTRYPOINT, CMD and USER"
    return json.loads(entrypoint[-1]), json.loads(cmd[-1]), user[-1]


_FAKE_PYTHON = '#!/bin/sh\nprintf \'%s\\0\' "$0" "$@"\n'


def _argv(container: dict[str, Any], env: dict[str, str], tmp: Path) -> list[str]:
    """The process a container starts (Kubernetes' command/args over ENTRYPOINT/CMD).

    A ``sh -c`` wrapper is run for real, with a fake ``python`` first on PATH that prints
    the arguments it was given.
    """
    entrypoint, cmd, _ = _image()
    command, args = container.get("command"), container.get("args")
    if command is None:
        argv = [*entrypoint, *(cmd if args is None else args)]
    else:
        argv = [*command, *(args or [])]
    for arg in argv:
        assert "$(" not in arg, f"{container['name']}: $(VAR) expansion in {arg!r}"
    if Path(argv[0]).name not in ("sh", "bash", "dash") or argv[1:2] != ["-c"]:
        return argv
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text(_FAKE_PYTHON)
    (fake / "python").chmod(0o755)
    done = subprocess.run(
        ["/bin/sh", "-c", argv[2]],
        env={**env, "PATH": f"{fake}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise WrapperFailed(done.stderr)
    out = done.stdout.split("\0")[:-1]
    return ["python", *out[1:]]


class WrapperFailed(Exception):
    """A container's shell wrapper exited non-zero."""


def _parse_service(argv: list[str]) -> tuple[str, Any]:
    """(module, parsed arguments) of ``python -m services.X ...``; fails on bad arguments."""
    assert argv[:2] == ["python", "-m"], f"not `python -m SERVICE`: {argv}"
    module = argv[2]
    assert module in SERVICES, f"{module} is none of {sorted(SERVICES)}"
    parser = importlib.import_module(module + ".__main__").make_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv[3:])
    except SystemExit:
        pytest.fail(f"{' '.join(argv)}: rejected by {module}: {stderr.getvalue().strip()}")
    assert args.command in SERVICES[module]
    return module, args


def _container_env(
    workload: dict[str, Any], container: dict[str, Any], objs: list[dict[str, Any]]
) -> dict[str, str]:
    """The container's environment, secrets taken from the example Secret."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = _example_secrets()[ref["name"]][ref["key"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            (cm,) = [c for c in _objs(objs, "ConfigMap") if _generated(_name(c), ref["name"])]
            env[var["name"]] = cm["data"][ref["key"]]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path == "metadata.name", f"unexpected fieldRef {path}"
            env[var["name"]] = f"{_name(workload)}-0"
        else:
            env[var["name"]] = "2"  # resourceFieldRef: a CPU count
    return env


def _config_text(objs: list[dict[str, Any]]) -> str:
    (cm,) = [c for c in _objs(objs, "ConfigMap") if _generated(_name(c), CONFIG_MAP)]
    return str(cm["data"][CONFIG_KEY])


class Effective:
    """One scarlet container: its argv, module, arguments and effective configuration."""

    def __init__(
        self,
        workload: dict[str, Any],
        container: dict[str, Any],
        objs: list[dict[str, Any]],
        tmp: Path,
    ) -> None:
        self.workload, self.container = workload, container
        self.env = _container_env(workload, container, objs)
        self.argv = _argv(container, self.env, tmp)
        self.module, self.args = _parse_service(self.argv)
        config_file = tmp / f"{_name(workload)}-{container['name']}.toml"
        config_file.write_text(_config_text(objs))
        assert self.args.config is not None, f"{self.argv}: no --config"
        self.config_path = str(self.args.config)
        self.config = load_config(
            FederationConfig,
            path=config_file,
            env=self.env,
            overrides=flag_overrides(self.args, FederationConfig),
        )
        self.settings = load_config(
            ServiceSettings,
            path=config_file,
            env=self.env,
            overrides=flag_overrides(self.args, ServiceSettings),
            section="service",
        )


def _effective(objs: list[dict[str, Any]], tmp: Path) -> list[Effective]:
    found = [Effective(w, c, objs, tmp) for w, c in _scarlet_containers(objs)]
    assert found, "no scarlet containers"
    return found


# ======================================================================================
# Rendering
# ======================================================================================


@pytest.mark.parametrize("name", RENDERS)
def test_every_kustomization_renders_unique_objects(name):
    objs = render(name)
    assert objs
    ids = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), _name(o)) for o in objs]
    assert len(ids) == len(set(ids)), f"duplicates in {name}"
    # `kubectl delete -k` must never take the namespace (Secrets, Redis volume) with it
    assert not _objs(objs, "Namespace"), f"{name} renders the Namespace"


def test_the_namespace_enforces_the_restricted_pod_security_standard():
    (namespace,) = _load_docs(K8S / "base" / "namespace.yaml")
    assert namespace["kind"] == "Namespace" and _name(namespace) == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    kv = _need("kubernetes_validate", "validates objects against the Kubernetes schemas")
    for version in K8S_VERSIONS:
        kv.validate(namespace, kv.utils.latest_version() if version == "latest" else version, True)


def test_every_kustomization_under_deploy_is_rendered_by_these_tests():
    rendered = {d.resolve() for d, _ in RENDERS.values()}
    components = {c.resolve() for _, cs in RENDERS.values() for c in cs}
    for path in DEPLOY.rglob("kustomization.y*ml"):
        kind = yaml.safe_load(path.read_text()).get("kind", "Kustomization")
        wanted = components if kind == "Component" else rendered
        assert path.parent.resolve() in wanted, f"{path.relative_to(ROOT)} is never rendered"


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl with kustomize v4+ to compare with")
@pytest.mark.parametrize("name", RENDERS)
def test_the_fallback_renderer_agrees_with_kubectl_kustomize(name):
    ours = copy.deepcopy(list(_render_python(name)))
    theirs = copy.deepcopy(list(_render_kubectl(name)))
    # kubectl suffixes generated ConfigMap names with a content hash; ours does not
    text = json.dumps(theirs)
    for cm in _objs(theirs, "ConfigMap"):
        base = re.sub(r"-[a-z0-9]{10}$", "", _name(cm))
        if any(_name(o) == base for o in _objs(ours, "ConfigMap")):
            text = text.replace(f'"{_name(cm)}"', f'"{base}"')

    def key(o: dict[str, Any]) -> str:
        return f"{o['kind']}/{o['metadata'].get('namespace')}/{_name(o)}"

    assert sorted(json.loads(text), key=key) == sorted(ours, key=key)


# ======================================================================================
# Schemas: core objects (kubernetes-validate), CRDs (structural)
# ======================================================================================


def _is_core(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@pytest.mark.parametrize("name", RENDERS)
def test_core_objects_pass_kubernetes_validate_strict(name):
    kv = _need("kubernetes_validate", "validates objects against the Kubernetes schemas")
    latest = kv.utils.latest_version()
    failures = []
    for obj in render(name):
        if not _is_core(obj):
            continue
        for version in K8S_VERSIONS:
            version = latest if version == "latest" else version
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                failures.append(f"{obj['kind']}/{_name(obj)} (k8s {version}) {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                failures.append(f"{obj['kind']}/{_name(obj)}: {e.message}")
    assert failures == []


def test_kubernetes_validate_rejects_an_unknown_field():
    # Given: the aggregator Deployment with a misspelled field
    kv = _need("kubernetes_validate", "validates objects against the Kubernetes schemas")
    (deployment,) = [
        o for o in render("base") if _name(o) == "scarlet-aggregator" and o["kind"] == "Deployment"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    # When / Then: strict validation is really strict
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.30.0", strict=True)


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?")
_UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
_API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}


def _quantity(value: str | int | float) -> float:
    match = _QUANTITY.fullmatch(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def _check_container(c: dict[str, Any], volumes: set[str], where: str) -> list[str]:
    problems = []
    if not _DNS_LABEL.fullmatch(c.get("name", "")):
        problems.append(f"{where}: container name {c.get('name')!r}")
    if not isinstance(c.get("image"), str) or not c["image"]:
        problems.append(f"{where}: no image")
    for port in c.get("ports", []):
        if not 0 < int(port["containerPort"]) < 65536 or len(port.get("name", "")) > 15:
            problems.append(f"{where}: bad port {port}")
    for var in c.get("env", []):
        if not _ENV_NAME.fullmatch(var["name"]):
            problems.append(f"{where}: env name {var['name']!r}")
        has_value, source = "value" in var, var.get("valueFrom", {})
        if has_value == bool(source) or len(source) > 1:
            problems.append(f"{where}: env {var['name']} needs exactly one value or source")
        if has_value and not isinstance(var["value"], str):
            problems.append(f"{where}: env {var['name']} value must be a string")
    for mount in c.get("volumeMounts", []):
        if mount["name"] not in volumes:
            problems.append(f"{where}: mounts undeclared volume {mount['name']}")
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(probe_name)
        if probe is None:
            continue
        handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
        if len(handlers) != 1:
            problems.append(f"{where}: {probe_name} needs one handler, has {handlers}")
        port = probe.get("httpGet", probe.get("tcpSocket", {})).get("port")
        if port is not None and _resolve_port(port, c) is None:
            problems.append(f"{where}: {probe_name} port {port!r} is not a container port")
    resources = c.get("resources", {})
    for kind in ("cpu", "memory"):
        request = resources.get("requests", {}).get(kind)
        limit = resources.get("limits", {}).get(kind)
        if request is None or limit is None:
            problems.append(f"{where}: {kind} request and limit are both required")
        elif _quantity(request) > _quantity(limit):
            problems.append(f"{where}: {kind} request {request} above limit {limit}")
    return problems


def _check_core(obj: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    kind, where = obj["kind"], f"{obj['kind']}/{obj['metadata'].get('name')}"
    if kind not in _API_VERSIONS:
        return [f"{where}: no structural checks for kind {kind}; add them"]
    problems = []
    if obj["apiVersion"] != _API_VERSIONS[kind]:
        problems.append(f"{where}: apiVersion {obj['apiVersion']}")
    name = obj["metadata"].get("name", "")
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        problems.append(f"{where}: name is not a DNS label")
    if kind not in CLUSTER_SCOPED and obj["metadata"].get("namespace") != NAMESPACE:
        problems.append(f"{where}: namespace {obj['metadata'].get('namespace')!r}")
    for key, value in obj["metadata"].get("labels", {}).items():
        if not isinstance(value, str) or len(value) > 63:
            problems.append(f"{where}: label {key}={value!r}")
    if kind in ("ConfigMap", "Secret"):
        for key, value in {**obj.get("data", {}), **obj.get("stringData", {})}.items():
            if not isinstance(value, str) or not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                problems.append(f"{where}: data {key!r} must be a string under a valid key")
    if kind in ("Deployment", "StatefulSet"):
        spec = obj["spec"]
        selector = spec.get("selector", {})
        if not selector.get("matchLabels") or not _selects(selector, _pod_labels(obj)):
            problems.append(f"{where}: selector does not select its own pod template")
        pod = spec["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        containers = pod.get("containers", [])
        if not containers:
            problems.append(f"{where}: no containers")
        names = [c.get("name") for c in _containers(obj)]
        if len(names) != len(set(names)):
            problems.append(f"{where}: duplicate container names")
        for c in _containers(obj):
            problems += _check_container(c, volumes, f"{where}/{c.get('name')}")
        if kind == "StatefulSet":
            governing = [s for s in _objs(objs, "Service") if _name(s) == spec.get("serviceName")]
            if len(governing) != 1 or governing[0]["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: serviceName must name a headless Service here")
    if kind == "Service":
        selected = [w for w in _workloads(objs) if _selects(
            {"matchLabels": obj["spec"].get("selector", {})}, _pod_labels(w))]  # fmt: skip
        if not selected:
            problems.append(f"{where}: selects no pod template of this render")
        for port in obj["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for w in selected:
                if not any(_resolve_port(target, c) for c in _containers(w)):
                    problems.append(f"{where}: targetPort {target!r} not in {_name(w)}")
    if kind == "NetworkPolicy":
        spec = obj["spec"]
        selected = [w for w in _workloads(objs) if _selects(spec["podSelector"], _pod_labels(w))]
        if not selected:
            problems.append(f"{where}: selects no pod template of this render")
        if spec.get("policyTypes") != ["Ingress"]:
            problems.append(f"{where}: policyTypes must be stated (Ingress)")
        for rule in spec.get("ingress", []):
            if not rule.get("from") or not rule.get("ports"):
                problems.append(f"{where}: an ingress rule open to every peer or port")
            for port in rule.get("ports", []):
                for w in selected:
                    if not any(_resolve_port(port["port"], c) for c in _containers(w)):
                        problems.append(f"{where}: port {port['port']!r} not in {_name(w)}")
    if kind == "PodDisruptionBudget":
        spec = obj["spec"]
        if ("minAvailable" in spec) == ("maxUnavailable" in spec):
            problems.append(f"{where}: exactly one of minAvailable, maxUnavailable")
        if not any(_selects(spec.get("selector", {}), _pod_labels(w)) for w in _workloads(objs)):
            problems.append(f"{where}: selects no pod template of this render")
    if kind == "HorizontalPodAutoscaler":
        problems += _check_hpa(obj, objs, where)
    return problems


def _check_hpa(obj: dict[str, Any], objs: list[dict[str, Any]], where: str) -> list[str]:
    spec, problems = obj["spec"], []
    ref = spec["scaleTargetRef"]
    targets = [w for w in _workloads(objs) if w["kind"] == ref["kind"] and _name(w) == ref["name"]]
    if len(targets) != 1 or ref.get("apiVersion") != targets[0]["apiVersion"]:
        return [f"{where}: scale target {ref} not in this render"]
    if not 1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
        problems.append(f"{where}: replica bounds {spec.get('minReplicas')}..{spec['maxReplicas']}")
    if "replicas" in targets[0]["spec"]:
        problems.append(f"{where}: {_name(targets[0])} states replicas the HPA owns")
    for metric in spec.get("metrics", []):
        resource = metric.get("resource", {})
        if metric["type"] == "Resource" and resource["target"]["type"] == "Utilization":
            # utilization is usage over request: a container without one has none
            for c in _containers(targets[0]):
                if resource["name"] not in c.get("resources", {}).get("requests", {}):
                    problems.append(f"{where}: {c['name']} requests no {resource['name']}")
    return problems


@pytest.mark.parametrize("name", RENDERS)
def test_core_objects_are_structurally_sound(name):
    objs = render(name)
    problems = [p for obj in objs if _is_core(obj) for p in _check_core(obj, objs)]
    assert problems == []


def _allowed(obj: dict[str, Any], keys: set[str], where: str) -> list[str]:
    extra = set(obj) - keys
    return [f"{where}: unknown field(s) {sorted(extra)}"] if extra else []


def _check_scaled_object(obj: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    where, spec = f"ScaledObject/{_name(obj)}", obj.get("spec", {})
    problems = _allowed(spec, {
        "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
        "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
        "triggers"}, where)  # fmt: skip
    target = spec.get("scaleTargetRef", {})
    problems += _allowed(target, {"apiVersion", "kind", "name", "envSourceContainerName"}, where)
    if not target.get("name"):
        problems.append(f"{where}: spec.scaleTargetRef.name is required")
    kind = target.get("kind", "Deployment")
    if not [o for o in objs if o["kind"] == kind and _name(o) == target.get("name")]:
        problems.append(f"{where}: scale target {kind}/{target.get('name')} not in this render")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        problems.append(f"{where}: replica bounds {low}..{high}")
    for field in ("pollingInterval", "cooldownPeriod"):
        if field in spec and not (isinstance(spec[field], int) and spec[field] > 0):
            problems.append(f"{where}: {field} must be a positive integer")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        problems += _allowed(behavior, {"scaleUp", "scaleDown"}, where)
    fallback = spec.get("fallback")
    if fallback is not None:
        problems += _allowed(fallback, {"failureThreshold", "replicas", "behavior"}, where)
        for field in ("failureThreshold", "replicas"):
            if not (isinstance(fallback.get(field), int) and fallback[field] > 0):
                problems.append(f"{where}: fallback.{field} must be a positive integer")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        return [*problems, f"{where}: spec.triggers must be a non-empty list"]
    for trigger in triggers:
        problems += _allowed(trigger, {
            "type", "name", "metadata", "authenticationRef", "metricType",
            "useCachedMetrics"}, where)  # fmt: skip
        metadata = trigger.get("metadata")
        if not trigger.get("type") or not isinstance(metadata, dict):
            problems.append(f"{where}: a trigger needs type and metadata")
            continue
        if not all(isinstance(v, str) for v in metadata.values()):
            problems.append(f"{where}: trigger metadata values must be strings: {metadata}")
        # KEDA ignores fallback for a trigger whose metric is not an AverageValue
        if fallback is not None and trigger.get("metricType", "AverageValue") != "AverageValue":
            problems.append(f"{where}: fallback needs metricType AverageValue")
        if trigger["type"] == "rabbitmq":
            if metadata.get("mode") not in ("QueueLength", "MessageRate"):
                problems.append(f"{where}: rabbitmq mode {metadata.get('mode')!r}")
            if metadata.get("protocol", "auto") not in ("amqp", "http", "auto"):
                problems.append(f"{where}: rabbitmq protocol {metadata.get('protocol')!r}")
            if not metadata.get("queueName") or not metadata.get("value"):
                problems.append(f"{where}: rabbitmq needs queueName and value")
        ref = trigger.get("authenticationRef")
        if ref is not None:
            kind = ref.get("kind", "TriggerAuthentication")
            if not [o for o in objs if o["kind"] == kind and _name(o) == ref.get("name")]:
                problems.append(f"{where}: authenticationRef {ref} not in this render")
    return problems


def _check_trigger_authentication(obj: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    where, spec = f"TriggerAuthentication/{_name(obj)}", obj.get("spec", {})
    problems = _allowed(spec, {
        "secretTargetRef", "env", "hashiCorpVault", "azureKeyVault", "podIdentity",
        "configMapTargetRef", "gcpSecretManager", "awsSecretManager", "boundServiceAccountToken",
        "azureAppConfiguration"}, where)  # fmt: skip
    refs = spec.get("secretTargetRef")
    if not isinstance(refs, list) or not refs:
        problems.append(f"{where}: spec.secretTargetRef must be a non-empty list")
    for ref in refs or []:
        problems += _allowed(ref, {"parameter", "name", "key"}, where)
        if not all(isinstance(ref.get(k), str) and ref[k] for k in ("parameter", "name", "key")):
            problems.append(f"{where}: secretTargetRef needs parameter, name and key")
    return problems


_RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus",
                 "replacement", "action"}  # fmt: skip
_RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                    "lowercase", "uppercase", "keepequal", "dropequal"}  # fmt: skip


def _check_service_monitor(obj: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    where, spec = f"ServiceMonitor/{_name(obj)}", obj.get("spec", {})
    problems = _allowed(spec, {
        "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
        "podTargetLabels", "sampleLimit", "targetLimit", "scrapeProtocols", "attachMetadata",
        "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "scrapeClass",
        "bodySizeLimit", "keepDroppedTargets", "fallbackScrapeProtocol"}, where)  # fmt: skip
    services = [s for s in _objs(objs, "Service") if _selects(
        spec.get("selector", {}), s["metadata"].get("labels", {}))]  # fmt: skip
    if not services:
        problems.append(f"{where}: spec.selector selects no Service of this render")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, f"{where}: spec.endpoints must be a non-empty list"]
    for endpoint in endpoints:
        problems += _allowed(endpoint, {
            "port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
            "honorTimestamps", "relabelings", "metricRelabelings", "params", "tlsConfig",
            "bearerTokenSecret", "authorization", "basicAuth", "oauth2", "followRedirects",
            "enableHttp2", "filterRunning", "proxyUrl", "trackTimestampsStaleness"},
            where)  # fmt: skip
        for service in services:
            names = [p.get("name") for p in service["spec"]["ports"]]
            if endpoint.get("port") not in names:
                problems.append(f"{where}: port {endpoint.get('port')!r} not in {_name(service)}")
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint and not re.fullmatch(r"\d+(ms|s|m|h)", endpoint[field]):
                problems.append(f"{where}: {field} {endpoint[field]!r} is not a duration")
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            problems += _allowed(relabel, _RELABEL_KEYS, where)
            if relabel.get("action", "replace") not in _RELABEL_ACTIONS:
                problems.append(f"{where}: relabel action {relabel.get('action')!r}")
            if relabel.get("action", "replace") == "replace" and not relabel.get("targetLabel"):
                problems.append(f"{where}: a replace relabeling needs targetLabel")
    return problems


_RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
_GROUP_KEYS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}


def _check_prometheus_rule(obj: dict[str, Any], objs: list[dict[str, Any]]) -> list[str]:
    where, spec = f"PrometheusRule/{_name(obj)}", obj.get("spec", {})
    problems = _allowed(spec, {"groups"}, where)
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        return [*problems, f"{where}: spec.groups must be a non-empty list"]
    names = [g.get("name") for g in groups]
    if len(set(names)) != len(names) or not all(names):
        problems.append(f"{where}: group names must be unique and non-empty: {names}")
    for group in groups:
        problems += _allowed(group, _GROUP_KEYS, where)
        for rule in group.get("rules", []):
            problems += _allowed(rule, _RULE_KEYS, where)
            if ("alert" in rule) == ("record" in rule) or not isinstance(rule.get("expr"), str):
                problems.append(f"{where}: a rule needs expr and one of alert, record: {rule}")
            for field in ("labels", "annotations"):
                if not all(isinstance(v, str) for v in rule.get(field, {}).values()):
                    problems.append(f"{where}: {rule.get('alert')} {field} must be strings")
    return problems


CRD_CHECKS = {
    ("keda.sh/v1alpha1", "ScaledObject"): _check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _check_trigger_authentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _check_prometheus_rule,
}


@pytest.mark.parametrize("name", RENDERS)
def test_crd_objects_are_structurally_sound(name):
    objs = render(name)
    problems = []
    for obj in objs:
        if _is_core(obj):
            continue
        check = CRD_CHECKS.get((obj["apiVersion"], obj["kind"]))
        if check is None:
            problems.append(f"{obj['apiVersion']} {obj['kind']}: no structural checks; add them")
            continue
        problems += _allowed(obj, {"apiVersion", "kind", "metadata", "spec"}, obj["kind"])
        if not _DNS_LABEL.fullmatch(obj["metadata"].get("name", "")):
            problems.append(f"{obj['kind']}: metadata.name {obj['metadata'].get('name')!r}")
        if obj["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{obj['kind']}/{_name(obj)}: namespace must be {NAMESPACE}")
        problems += check(obj, objs)
    assert problems == []


def test_the_crd_checks_catch_broken_objects():
    # Given: the KEDA overlay with a wrong mode, a dangling auth ref and a stray field
    objs = render("pool-keda")
    (scaled,) = _objs(objs, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["mode"] = "QueueDepth"
    scaled["spec"]["triggers"][0]["authenticationRef"]["name"] = "nowhere"
    scaled["spec"]["maxReplicas"] = 3
    # When
    problems = _check_scaled_object(scaled, objs)
    # Then
    assert len(problems) == 3, problems


@pytest.mark.parametrize("name", RENDERS)
def test_pods_meet_the_restricted_pod_security_standard(name):
    # the namespace enforces "restricted" (base/namespace.yaml)
    problems = []
    for w in _workloads(render(name)):
        pod, where = _pod_spec(w) or {}, f"{w['kind']}/{_name(w)}"
        pod_sc = pod.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True or pod_sc.get("runAsUser", 1) == 0:
            problems.append(f"{where}: runAsNonRoot")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile RuntimeDefault")
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(field):
                problems.append(f"{where}: {field}")
        for volume in pod.get("volumes", []):
            allowed = {"name", "configMap", "secret", "emptyDir", "persistentVolumeClaim",
                       "projected", "downwardAPI", "ephemeral", "csi"}  # fmt: skip
            if set(volume) - allowed:
                problems.append(f"{where}: volume type {sorted(set(volume) - allowed)}")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        for c in _containers(w):
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
                problems.append(f"{where}/{c['name']}: allowPrivilegeEscalation false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}/{c['name']}: capabilities drop ALL")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}/{c['name']}: added capabilities")
    assert problems == []


# ======================================================================================
# Agreement with the code
# ======================================================================================


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_every_container_runs_a_service_with_arguments_its_parser_accepts(name, tmp_path):
    objs = render(name)
    for eff in _effective(objs, tmp_path):
        where = f"{_name(eff.workload)}/{eff.container['name']}"
        assert eff.args.command == "run", f"{where}: a long-running pod must `run`"
        # --config names the mounted ConfigMap's file
        pod = _pod_spec(eff.workload) or {}
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in eff.container["volumeMounts"]}
        directory, _, file = eff.config_path.rpartition("/")
        assert file == CONFIG_KEY and directory in mounts, f"{where}: --config {eff.config_path}"
        (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[directory]]
        assert _generated(volume["configMap"]["name"], CONFIG_MAP), where
        # every component runs the mode its workload says
        component = _pod_labels(eff.workload)["app.kubernetes.io/component"]
        assert eff.module == f"services.{component}", where


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_every_scarlet_variable_is_a_configuration_key(name):
    keys = {*FederationConfig.model_fields, *ServiceSettings.model_fields}
    for workload, container in _scarlet_containers(render(name)):
        for var in container.get("env", []):
            if var["name"].startswith("SCARLET_"):
                key = var["name"].removeprefix("SCARLET_").lower()
                assert key in keys, f"{_name(workload)}: {var['name']} is no configuration key"
        # Service links would add SCARLET_<SERVICE>_PORT=tcp://... for Services named
        # scarlet-*, which the configuration would read as keys
        assert (_pod_spec(workload) or {}).get("enableServiceLinks") is False, _name(workload)


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_the_configmap_toml_loads_for_both_models(name, tmp_path):
    path = tmp_path / CONFIG_KEY
    path.write_text(_config_text(render(name)))
    config = load_config(FederationConfig, path=path, env={})
    settings = load_config(ServiceSettings, path=path, env={}, section="service")
    # only the [service] table: anything else would be silently ignored
    doc = tomllib.loads(path.read_text())
    assert {k for k, v in doc.items() if isinstance(v, dict)} == {"service"}
    # credentials only ever come from Secrets
    for key in ("broker_url", "redis_url", "state_url"):
        assert "@" not in getattr(settings, key), f"{key} in the ConfigMap holds credentials"
    assert settings.metrics_port > 0
    assert config.run_id


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_the_services_of_one_render_agree_on_the_federation(name, tmp_path):
    objs = render(name)
    effective = _effective(objs, tmp_path)
    assert len({e.config for e in effective}) == 1, "containers disagree on the federation"
    (aggregator,) = [e for e in effective if e.module == "services.aggregator"]
    assert aggregator.workload["kind"] == "Deployment"
    assert aggregator.workload["spec"].get("replicas", 1) == 1
    assert aggregator.workload["spec"]["strategy"]["type"] == "Recreate"
    assert [e for e in effective if e.module == "services.cache"]
    workers = [e for e in effective if e.module == "services.worker"]
    assert workers
    for worker in workers:
        mode = "pool" if worker.args.pool else "pinned"
        assert aggregator.settings.worker_mode == mode, "the aggregator routes another mode"
        broker = urlsplit(worker.settings.broker_url)
        assert broker.scheme == "amqp" and broker.password, "the broker URL needs credentials"
        # DESIGN §4: workers never hold the federation store's credentials
        assert "SCARLET_REDIS_URL" not in worker.env
        if worker.args.pool:
            # stateless pods: the client states must live in a shared store
            assert worker.workload["kind"] == "Deployment"
            assert urlsplit(worker.settings.state_url).scheme in ("redis", "rediss")
            assert worker.settings.state_url != aggregator.settings.redis_url
    for eff in effective:
        if eff.module != "services.worker":
            assert "@" in eff.settings.redis_url, f"{eff.module}: no Redis credentials"


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_probes_annotations_and_services_use_the_metrics_port(name, tmp_path):
    objs = render(name)
    for eff in _effective(objs, tmp_path):
        port, c = eff.settings.metrics_port, eff.container
        where = f"{_name(eff.workload)}/{c['name']}"
        assert port > 0, f"{where}: metrics_port 0 serves no /metrics for the probes"
        assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/metrics", f"{where}: {probe}"
            assert _resolve_port(get["port"], c) == port, f"{where}: {probe} port"
        # what deploy/prometheus/prometheus-kubernetes.yml discovers pods by
        labels = _pod_labels(eff.workload)
        assert labels["app.kubernetes.io/part-of"] == "scarlet", where
        assert labels["app.kubernetes.io/component"] in ("aggregator", "cache", "worker")
        annotations = eff.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
        services = [s for s in _objs(objs, "Service") if _selects(
            {"matchLabels": s["spec"]["selector"]}, _pod_labels(eff.workload))]  # fmt: skip
        assert services, f"{where}: no Service exposes the metrics"
        for service in services:
            (sp,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
            assert _resolve_port(sp["targetPort"], c) == port
            assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
            assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("name", ["pool-keda", "pool-keda+servicemonitor"])
def test_keda_scales_the_pool_workers_on_the_pool_task_queue(name, tmp_path):
    objs = render(name)
    effective = _effective(objs, tmp_path)
    config = effective[0].config
    (scaled,) = _objs(objs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == routes.pool_tasks_queue(config.run_id)
    assert int(trigger["metadata"]["value"]) >= 1
    # the target is the pool Deployment, whose replica count KEDA owns
    target = scaled["spec"]["scaleTargetRef"]
    (workers,) = [e for e in effective if _name(e.workload) == target["name"]]
    assert workers.workload["kind"] == target.get("kind", "Deployment") == "Deployment"
    assert workers.args.pool
    assert "replicas" not in workers.workload["spec"]
    assert 1 <= scaled["spec"]["maxReplicaCount"] <= config.clients
    # the queue length is read from the management API as the monitoring role, which may
    # neither publish nor consume: never with a user the services run as
    (auth,) = [a for a in _objs(objs, "TriggerAuthentication")
               if _name(a) == trigger["authenticationRef"]["name"]]  # fmt: skip
    (host,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
    assert host["name"] == "scarlet-monitoring"
    url = urlsplit(_example_secrets()[host["name"]][host["key"]])
    assert (url.scheme, url.port, trigger["metadata"].get("protocol")) == ("http", 15672, "http")
    assert url.username == f"{config.run_id}-monitoring"
    assert url.username not in {urlsplit(e.env["SCARLET_BROKER_URL"]).username for e in effective}


def test_pinned_workers_are_one_statefulset_of_one_pod_per_client(tmp_path):
    objs = render("pinned")
    effective = _effective(objs, tmp_path)
    config = effective[0].config
    assert not [d for d in _objs(objs, "Deployment") if _name(d) == "scarlet-worker"]
    workers = sorted(
        (e for e in effective if e.module == "services.worker"), key=lambda e: e.args.client
    )
    assert [e.args.client for e in workers] == list(range(config.clients))
    for e in workers:
        sts = e.workload
        assert (sts["kind"], sts["spec"]["replicas"]) == ("StatefulSet", 1)
        assert (e.args.command, e.args.pool, e.settings.worker_mode) == ("run", False, "pinned")
        # the client's state survives restarts on the pod's own volume
        mounts = {m["mountPath"]: m["name"] for m in e.container["volumeMounts"]}
        templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
        assert mounts.get(e.args.state_dir) in templates
    # the cache service answers the clients' users, not the pool's
    (cache,) = [e for e in effective if e.module == "services.cache"]
    assert cache.settings.worker_mode == "pinned"


def test_the_pinned_client_statefulsets_are_generated_from_the_template():
    # clients.yaml is what clients.py makes of client.template.yaml and base/config.toml
    spec = importlib.util.spec_from_file_location("clients", K8S / "overlays/pinned/clients.py")
    assert spec is not None and spec.loader is not None
    clients = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clients)
    assert (K8S / "overlays/pinned/clients.yaml").read_text() == clients.expected(), (
        "run python deploy/kubernetes/overlays/pinned/clients.py"
    )


def _client_of_secret(name: str) -> int | None:
    match = re.fullmatch(r"scarlet-client-(\d+)", name)
    return int(match.group(1)) if match else None


def test_no_pinned_worker_is_given_redis_or_another_roles_secret(tmp_path):
    objs = render("pinned")
    workers = [e for e in _effective(objs, tmp_path) if e.module == "services.worker"]
    assert workers
    # the ConfigMap every pod mounts names no Redis at all
    service = tomllib.loads(_config_text(objs))["service"]
    assert not {"redis_url", "state_url"} & set(service)
    assert not [v for v in service.values() if "redis" in str(v)]
    for e in workers:
        refs = _secret_refs([e.workload])
        # only its own client's broker user
        assert refs == [(f"scarlet-client-{e.args.client}", "broker-url")], refs
        names = {v["name"] for v in e.container.get("env", [])}
        assert not names & {"SCARLET_REDIS_URL", "SCARLET_STATE_URL"}
        assert not [v for v in (_pod_spec(e.workload) or {}).get("volumes", [])
                    if "secret" in v or "projected" in v]  # fmt: skip
        assert "store-access" not in " ".join(_pod_labels(e.workload))
        # and what it is given holds no Redis URL, whatever the keys are called
        assert not [v for v in e.env.values() if v.startswith(("redis://", "rediss://"))]
        assert e.settings.broker_url.startswith("amqp://fashion-k8s-client-")
        assert urlsplit(e.settings.broker_url).username == (
            e.settings.client_user_prefix + str(e.args.client))  # fmt: skip


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_every_role_reads_its_own_secret_only(name, tmp_path):
    objs = render(name)
    own = {"services.aggregator": "scarlet-aggregator", "services.cache": "scarlet-cache"}
    for e in _effective(objs, tmp_path):
        refs = {secret for secret, _ in _secret_refs([e.workload])}
        if e.module == "services.worker":
            want = "scarlet-pool" if e.args.pool else f"scarlet-client-{e.args.client}"
        else:
            want = own[e.module]
        assert refs == {want}, (_name(e.workload), refs)
        # the broker user is the role's identity that the receivers check
        user = urlsplit(e.settings.broker_url).username
        identities = {
            "scarlet-aggregator": e.settings.aggregator_user,
            "scarlet-cache": e.settings.cache_user,
            "scarlet-pool": e.settings.pool_user,
        }
        client = getattr(e.args, "client", None)  # workers only
        expected = identities.get(want, f"{e.settings.client_user_prefix}{client}")
        assert user == expected and e.settings.verify_senders


def _image_problems(objs: list[dict[str, Any]], want: str) -> list[str]:
    return [f"{_name(w)}/{c['name']}: {c.get('image')}"
            for w, c in _scarlet_containers(objs) if c.get("image") != want]  # fmt: skip


def _base_image() -> str:
    spec = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (image,) = [i for i in spec["images"] if i["name"] == "scarlet-fd"]
    return f"{image.get('newName', 'scarlet-fd')}:{image['newTag']}"


@pytest.mark.parametrize("name", SCARLET_RENDERS)
def test_every_scarlet_container_runs_the_image_tag_of_the_base(name):
    # an overlay's own resources escape the base's images entry (the pinned workers once
    # ran the untagged image while the rest ran the tagged one)
    assert _image_problems(render(name), _base_image()) == []


def test_the_image_check_catches_a_mismatch():
    objs = copy.deepcopy(render("pinned"))
    (w, c), *_ = [(w, c) for w, c in _scarlet_containers(objs) if w["kind"] == "StatefulSet"]
    c["image"] = "scarlet-fd"
    assert _image_problems(objs, _base_image()) == [f"{_name(w)}/{c['name']}: scarlet-fd"]


# -------------------------------------------------------------------------- NetworkPolicy

PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA = ("keda", {"app": "keda-operator"})
STRANGER = (NAMESPACE, {"app": "debug-shell"})


def _peer_matches(peer: dict[str, Any], policy_ns: str, ns: str, labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # pods are not addressed by IP blocks here
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": ns}
        if peer["namespaceSelector"] and not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif ns != policy_ns:
        return False
    pods = peer.get("podSelector")
    return pods is None or pods == {} or _selects(pods, labels)


def _may_connect(
    objs: list[dict[str, Any]],
    source: tuple[str, dict[str, str]],
    target: dict[str, Any],
    port: int,
) -> bool:
    """Does the NetworkPolicy of ``objs`` let ``source`` (namespace, pod labels) reach
    ``target`` (a workload) on ``port``? A pod no policy selects accepts anything."""
    labels = _pod_labels(target)
    ns, src_labels = source
    policies = [
        p
        for p in _objs(objs, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"]
        and (p["spec"]["podSelector"] == {} or _selects(p["spec"]["podSelector"], labels))
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers and not any(
                _peer_matches(p, policy["metadata"]["namespace"], ns, src_labels) for p in peers
            ):
                continue
            ports = rule.get("ports")
            if not ports or any(
                _resolve_port(p["port"], c) == port for p in ports for c in _containers(target)
            ):
                return True
    return False


def _workload(objs: list[dict[str, Any]], app: str) -> dict[str, Any]:
    (w,) = [w for w in _workloads(objs) if _pod_labels(w).get("app.kubernetes.io/name") == app]
    return w


@pytest.mark.parametrize("name", ["base", "pool-keda", "pinned"])
def test_network_policies_let_each_role_reach_only_what_it_needs(name, tmp_path):
    objs = render(name) + render("backing")
    redis, rabbitmq = _workload(objs, "redis"), _workload(objs, "rabbitmq")
    scarlet = {id(e.workload): e for e in _effective(render(name), tmp_path)}
    metrics = 9400
    for e in scarlet.values():
        pod = (NAMESPACE, _pod_labels(e.workload))
        # Redis: the aggregator, the cache service and pool workers; never a pinned one
        holds_redis = e.module != "services.worker" or e.args.pool
        assert _may_connect(objs, pod, redis, 6379) == holds_redis, _name(e.workload)
        # RabbitMQ: every scarlet pod, AMQP only
        assert _may_connect(objs, pod, rabbitmq, 5672)
        assert not _may_connect(objs, pod, rabbitmq, 15672)
        assert not _may_connect(objs, pod, redis, 9121)  # the exporter's metrics
        # metrics: Prometheus only, and only the metrics port
        assert _may_connect(objs, PROMETHEUS, e.workload, metrics)
        assert not _may_connect(objs, pod, e.workload, metrics)
        assert not _may_connect(objs, STRANGER, e.workload, metrics)
    for stranger in (STRANGER, PROMETHEUS, KEDA):
        assert not _may_connect(objs, stranger, redis, 6379)
        assert not _may_connect(objs, stranger, rabbitmq, 5672)
    assert _may_connect(objs, KEDA, rabbitmq, 15672)
    assert _may_connect(objs, PROMETHEUS, rabbitmq, 15692)
    # the Redis exporter sidecar answers Prometheus only
    assert _may_connect(objs, PROMETHEUS, redis, 9121)
    assert not _may_connect(objs, STRANGER, redis, 9121)
    assert not _may_connect(objs, KEDA, redis, 9121)


def test_the_network_policy_check_sees_an_open_redis():
    # a policy that lets every pod of the namespace in must fail the test above
    objs = copy.deepcopy(render("pinned") + render("backing"))
    redis = _workload(objs, "redis")
    (policy,) = [p for p in _objs(objs, "NetworkPolicy") if "redis" in _name(p)]
    policy["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]
    pinned = next(w for w in _workloads(objs) if w["kind"] == "StatefulSet"
                  and _pod_labels(w).get("app.kubernetes.io/name") == "scarlet-fd")  # fmt: skip
    assert _may_connect(objs, (NAMESPACE, _pod_labels(pinned)), redis, 6379)


def test_the_aggregator_of_the_pool_overlay_routes_to_the_pool(tmp_path):
    effective = _effective(render("pool-keda"), tmp_path)
    (aggregator,) = [e for e in effective if e.module == "services.aggregator"]
    assert aggregator.settings.worker_mode == "pool"


@pytest.mark.parametrize(
    "name", ["pool-keda+servicemonitor", "pinned+servicemonitor", "pool-keda+monitoring"]
)
def test_the_servicemonitor_scrapes_every_scarlet_service(name):
    objs = render(name)
    (monitor,) = _objs(objs, "ServiceMonitor")
    selected = {
        _name(s)
        for s in _objs(objs, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    }
    assert selected == {"scarlet-aggregator", "scarlet-cache", "scarlet-worker"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the labels deploy/prometheus and deploy/grafana select on
    targets = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert targets["job"]["replacement"] == "scarlet"
    assert targets["service"]["sourceLabels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    ]


# ======================================================================================
# Secrets, broker settings, image
# ======================================================================================


def _secret_refs(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    refs = []
    for w in _workloads(objs):
        for c in _containers(w):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"]))
        for volume in (_pod_spec(w) or {}).get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"].get("items", []):
                    refs.append((volume["secret"]["secretName"], item["key"]))
    for auth in _objs(objs, "TriggerAuthentication"):
        refs += [(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]]
    return refs


@pytest.mark.parametrize("name", RENDERS)
def test_every_secret_reference_is_in_the_example_secret(name):
    secrets = _example_secrets()
    for secret, key in _secret_refs(render(name)):
        assert key in secrets.get(secret, {}), f"{secret}/{key} is not in {SECRET_EXAMPLE.name}"
    # no render carries a Secret: credentials are created by hand, never from the repo
    assert not _objs(render(name), "Secret")


def test_the_example_secret_is_consistent_and_never_applied():
    for path in DEPLOY.rglob("kustomization.y*ml"):
        spec = yaml.safe_load(path.read_text())
        entries = [*spec.get("resources", []), *spec.get("components", [])]
        for generator in spec.get("secretGenerator", []):
            entries += generator.get("files", []) + generator.get("envs", [])
        assert not [e for e in entries if "secret.example" in e], f"{path} applies the example"
    secrets = _example_secrets()
    for secret, values in secrets.items():
        for key, value in values.items():
            if "url" in key or "password" in key:
                assert "CHANGE-ME" in value, f"{secret}/{key} must be a placeholder"
    # one user per role, named as `scarlet provision` names them (Identities.for_run)
    config = tomllib.loads((K8S / "base" / CONFIG_KEY).read_text())
    ids = Identities.for_run(config["run_id"])
    roles = {"scarlet-aggregator": ids.aggregator, "scarlet-cache": ids.cache,
             "scarlet-pool": ids.pool, "scarlet-monitoring": ids.monitoring}  # fmt: skip
    roles |= {f"scarlet-client-{k}": ids.client(k) for k in range(config["clients"])}
    users: dict[str, set[str]] = {}
    for secret, user in roles.items():
        for key, url in secrets[secret].items():
            parts = urlsplit(url)
            assert parts.username == user, (secret, key)
            users.setdefault(parts.username, set()).add(unquote(parts.password or ""))
            if key != "management-url":
                option = {"broker-url": "broker_url", "redis-url": "redis_url",
                          "state-url": "state_url"}[key]  # fmt: skip
                load_config(ServiceSettings, env={}, overrides={option: url})
    assert all(len(pw) == 1 for pw in users.values()), "one password per user"
    assert len({pw for pws in users.values() for pw in pws}) == len(users), "shared password"
    # Redis ACL: the aggregator and the cache reach the federation's keys, the pool only
    # the client states (key names of shared/state/redis.py), without key enumeration
    acl: dict[str, list[str]] = {}
    for line in secrets["scarlet-redis"]["users.acl"].splitlines():
        words = line.split()
        if words and words[0] == "user":
            acl[words[1]] = words[2:]
    assert "off" in acl["default"]
    run = config["run_id"]
    for role in (Role.AGGREGATOR, Role.CACHE, Role.POOL):
        rules = redis_rules(role, run, "pool")
        assert rules is not None
        user = ids.user(role)
        assert acl[user] == [rules[0], f">{next(iter(users[user]))}", *rules[1:]], user

    def can_reach(url: str, key: str) -> bool:
        parts = urlsplit(url)
        rules = acl[parts.username or "default"]
        assert "on" in rules and f">{unquote(parts.password or '')}" in rules, url
        patterns = [r[1:] for r in rules if r.startswith("~")]
        return any(fnmatch.fnmatchcase(key, p) for p in patterns)

    store, state = secrets["scarlet-aggregator"]["redis-url"], secrets["scarlet-pool"]["state-url"]
    for key in (f"scarlet:{run}:cache:meta", f"scarlet:{run}:aggregator",
                f"scarlet:{run}:round:3:uploads"):  # fmt: skip
        assert can_reach(store, key) and not can_reach(state, key), key
    assert can_reach(state, f"scarlet:{run}:client:7")
    assert "-scan" in acl[ids.pool] and "-keys" in acl[ids.pool]
    # nobody but the aggregator, the cache service, the pool and the backing Redis' own
    # metrics exporter has a Redis user; the exporter reaches no key at all
    assert set(acl) == {"default", ids.aggregator, ids.cache, ids.pool, EXPORTER_USER}
    exporter = acl[EXPORTER_USER]
    assert "on" in exporter and "resetkeys" in exporter and "-@all" in exporter
    assert not [r for r in exporter if r.startswith(("~", "%", "&")) or r in ("allkeys", "+@all")]
    password = secrets["scarlet-redis"]["exporter-password"]
    assert [r for r in exporter if r.startswith(">")] == [f">{password}"]
    assert password not in {pw for pws in users.values() for pw in pws}, "shared password"


def test_the_broker_accepts_the_largest_message_the_services_send(tmp_path):
    text = RABBITMQ_CONF.read_text()
    values = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in text.splitlines())
        if k.strip() and not k.strip().startswith("#")
    )
    size = int(values["max_message_size"])
    assert size == 67108864 == ServiceSettings.model_fields["max_message_bytes"].default
    for eff in _effective(render("pool-keda"), tmp_path):
        assert eff.settings.max_message_bytes <= size


def test_the_image_runs_the_services_as_the_manifests_expect():
    entrypoint, cmd, user = _image()
    assert entrypoint == ["python", "-m"]
    assert cmd[0] in SERVICES
    text = CONTAINERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=\S*python:3\.11-slim", text, re.M)
    assert re.search(r"apt-get install .*dataset-fashion-mnist", text)
    assert "--index-url" in text and "https://download.pytorch.org/whl/cpu" in text
    # the torch pins equal pyproject.toml's
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if d.startswith(("torch==", "torchvision==")))
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pins['torch'])}$", text, re.M)
    assert re.search(rf"^ARG TORCHVISION_VERSION={re.escape(pins['torchvision'])}$", text, re.M)
    # a numeric non-root user, the one every scarlet pod runs as
    uid = int(user.split(":")[0])
    assert uid > 0
    for name in SCARLET_RENDERS:
        for workload, container in _scarlet_containers(render(name)):
            pod_sc = (_pod_spec(workload) or {})["securityContext"]
            assert pod_sc["runAsUser"] == uid, _name(workload)
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            # the only writable paths: /tmp (emptyDir) and volumes
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in (_pod_spec(workload) or {})["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], _name(workload)
