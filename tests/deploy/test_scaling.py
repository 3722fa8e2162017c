"""Scaling in the cluster: KEDA's fallback and activation, the HPA overlay for clusters
without KEDA, and PodDisruptionBudgets that protect the pods they name without ever
blocking a node drain. Renders come from ``test_deploy.py``."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from tests.deploy.test_deploy import (
    _check_core,
    _check_scaled_object,
    _containers,
    _effective,
    _name,
    _objs,
    _pod_labels,
    _selects,
    _workloads,
    render,
)

COMPONENT = "app.kubernetes.io/component"
APP = "app.kubernetes.io/name"


def _scaled_object(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (scaled,) = _objs(objs, "ScaledObject")
    return scaled


# ------------------------------------------------------------------------------- KEDA


def test_keda_falls_back_to_a_fixed_pool_when_the_queue_length_cannot_be_read(tmp_path):
    objs = render("pool-keda")
    spec = _scaled_object(objs)["spec"]
    config = _effective(objs, tmp_path)[0].config
    fallback = spec["fallback"]
    # one failed poll is noise, not an outage
    assert fallback["failureThreshold"] >= 2
    # between the bounds KEDA keeps, and not the maximum: a broken metric must not hold
    # the most pods a round can use for as long as it stays broken
    assert spec["minReplicaCount"] <= fallback["replicas"] < spec["maxReplicaCount"]
    # enough workers that a round's tasks need at most a few waves
    tasks = math.ceil(config.clients * config.sample_ratio)
    assert math.ceil(tasks / fallback["replicas"]) <= 2
    # KEDA applies fallback to AverageValue metrics only (the rabbitmq trigger's default)
    for trigger in spec["triggers"]:
        assert trigger.get("metricType", "AverageValue") == "AverageValue"


def test_keda_wakes_the_pool_for_the_first_waiting_task():
    spec = _scaled_object(render("pool-keda"))["spec"]
    for trigger in spec["triggers"]:
        activation = float(trigger["metadata"]["activationValue"])
        # active means "more than activationValue tasks wait": one task must be enough,
        # or a round's last tasks could wait with no worker once the pool may reach 0
        assert 0 <= activation < 1
        assert activation < float(trigger["metadata"]["value"])


def test_the_crd_check_sees_a_fallback_keda_would_ignore():
    objs = copy.deepcopy(render("pool-keda"))
    scaled = _scaled_object(objs)
    scaled["spec"]["triggers"][0]["metricType"] = "Value"
    scaled["spec"]["fallback"]["replicas"] = "5"
    problems = _check_scaled_object(scaled, objs)
    assert len(problems) == 2, problems


# -------------------------------------------------------------------------------- HPA


def _hpa(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (hpa,) = _objs(objs, "HorizontalPodAutoscaler")
    return hpa


def test_the_hpa_overlay_scales_the_pool_workers_on_cpu(tmp_path):
    objs = render("pool-hpa")
    assert not _objs(objs, "ScaledObject"), "two autoscalers on one Deployment"
    spec = _hpa(objs)["spec"]
    effective = _effective(objs, tmp_path)
    target = spec["scaleTargetRef"]
    (workers,) = [e for e in effective if _name(e.workload) == target["name"]]
    assert workers.workload["kind"] == target["kind"] == "Deployment"
    assert workers.args.pool, "only pool workers are interchangeable enough to scale"
    # the HPA owns the count: an applied replicas field would reset it on every apply
    assert "replicas" not in workers.workload["spec"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= workers.config.clients
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    # utilization is usage over the request: each container must request CPU, and a
    # training worker (up to its limit) must read above the target, an idle one below
    limit_over_request = min(
        _cpu(c["resources"]["limits"]["cpu"]) / _cpu(c["resources"]["requests"]["cpu"])
        for c in _containers(workers.workload)
    )
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100 * limit_over_request


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_the_hpa_and_keda_overlays_scale_the_same_pool_the_same_way():
    hpa = _hpa(render("pool-hpa"))["spec"]
    keda = _scaled_object(render("pool-keda"))["spec"]
    assert hpa["scaleTargetRef"]["name"] == keda["scaleTargetRef"]["name"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        keda["minReplicaCount"],
        keda["maxReplicaCount"],
    )
    # workers idle while the aggregator distils between rounds: neither autoscaler may
    # shrink the pool in that gap, and both wait the same window
    keda_down = keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    window = hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert window == keda_down["stabilizationWindowSeconds"] >= 300
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize("name", ["base", "pinned"])
def test_renders_without_an_autoscaler_keep_their_replica_counts(name):
    objs = render(name)
    assert not _objs(objs, "ScaledObject") and not _objs(objs, "HorizontalPodAutoscaler")
    assert all("replicas" in w["spec"] for w in _workloads(objs))


def test_the_hpa_check_sees_a_target_that_is_not_there():
    objs = copy.deepcopy(render("pool-hpa"))
    hpa = _hpa(objs)
    hpa["spec"]["scaleTargetRef"]["name"] = "scarlet-workers"
    assert _check_core(hpa, objs) == [
        "HorizontalPodAutoscaler/scarlet-worker: scale target "
        "{'apiVersion': 'apps/v1', 'kind': 'Deployment', 'name': 'scarlet-workers'} "
        "not in this render"
    ]


# ------------------------------------------------------------------------ disruptions

# Every render's pods that a drain must move with care: the cache service (RPC answers),
# the workers (throughput) and the single-replica backing services.
PROTECTED = {
    "base": {"cache", "worker"},
    "pool-keda": {"cache", "worker"},
    "pool-hpa": {"cache", "worker"},
    "pinned": {"cache", "worker"},
    "backing": {"broker", "store"},
}


def _replicas(workload: dict[str, Any], objs: list[dict[str, Any]]) -> int:
    """The fewest replicas ``workload`` runs with: its own count, or its autoscaler's
    minimum."""
    if "replicas" in workload["spec"]:
        return int(workload["spec"]["replicas"])
    for hpa in _objs(objs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == _name(workload):
            return int(hpa["spec"].get("minReplicas", 1))
    for scaled in _objs(objs, "ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] == _name(workload):
            return int(scaled["spec"].get("minReplicaCount", 0))
    return 1  # the Kubernetes default


def _count(value: int | str, pods: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * pods / 100)  # Kubernetes rounds up
    return int(value)


def _budget_problems(objs: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the PodDisruptionBudgets of ``objs``: a budget that selects no
    pods, pods of another component than its own, or allows no eviction at the fewest
    replicas (a drain would wait forever)."""
    problems = []
    for pdb in _objs(objs, "PodDisruptionBudget"):
        spec, where = pdb["spec"], f"PodDisruptionBudget/{_name(pdb)}"
        selected = [w for w in _workloads(objs) if _selects(spec["selector"], _pod_labels(w))]
        if not selected:
            problems.append(f"{where}: selects no pods")
            continue
        own = pdb["metadata"]["labels"][COMPONENT]
        strangers = [_name(w) for w in selected if _pod_labels(w).get(COMPONENT) != own]
        if strangers:
            problems.append(f"{where}: also selects {strangers}")
        pods = sum(_replicas(w, objs) for w in selected)
        if "maxUnavailable" in spec:
            allowed = _count(spec["maxUnavailable"], pods)
        else:
            allowed = pods - _count(spec["minAvailable"], pods)
        if allowed < 1:
            problems.append(f"{where}: allows no eviction of its {pods} pod(s): drains block")
        if spec.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(f"{where}: a crash-looping pod would hold drains up")
    return problems


@pytest.mark.parametrize("name", sorted(PROTECTED))
def test_every_budget_protects_its_own_pods_and_never_blocks_a_drain(name):
    objs = render(name)
    assert _budget_problems(objs) == []
    # each protected component is under exactly one budget: the eviction API refuses a
    # pod that two budgets select
    for workload in _workloads(objs):
        component = _pod_labels(workload).get(COMPONENT)
        budgets = [
            _name(p)
            for p in _objs(objs, "PodDisruptionBudget")
            if _selects(p["spec"]["selector"], _pod_labels(workload))
        ]
        expected = 1 if component in PROTECTED[name] else 0
        assert len(budgets) == expected, (_name(workload), budgets)


def test_the_budget_check_sees_a_budget_that_blocks_drains_or_guards_nothing():
    objs = copy.deepcopy(render("backing"))
    by_name = {_name(p): p for p in _objs(objs, "PodDisruptionBudget")}
    # Given: the single Redis under maxUnavailable 0, the broker's budget pointed nowhere
    by_name["scarlet-redis"]["spec"]["maxUnavailable"] = 0
    by_name["scarlet-rabbitmq"]["spec"]["selector"]["matchLabels"][APP] = "rabbit"
    # Then
    assert _budget_problems(objs) == [
        "PodDisruptionBudget/scarlet-rabbitmq: selects no pods",
        "PodDisruptionBudget/scarlet-redis: allows no eviction of its 1 pod(s): drains block",
    ]
    # minAvailable 1 of one replica blocks just the same
    del by_name["scarlet-redis"]["spec"]["maxUnavailable"]
    by_name["scarlet-redis"]["spec"]["minAvailable"] = 1
    assert "drains block" in _budget_problems(objs)[-1]
