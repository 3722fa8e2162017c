"""The metric catalogue keeps the names DESIGN §6 promises, low-cardinality labels, and
the byte identities the dashboard relies on."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from scarlet.up import Launcher
from shared.config import FederationConfig, ServiceSettings
from shared.metrics import LABEL_VALUES, Metrics

ROOT = Path(__file__).resolve().parents[2]

# DESIGN §6 "Metrics (names others depend on)", item by item, as exposed names
DESIGN_6 = {
    "bytes published per direction/kind": ("scarlet_bytes_total", {"direction", "kind"}),
    "bytes a float32 DS-FL run would have needed": ("scarlet_baseline_bytes_total", set()),
    "bytes saved by reason": ("scarlet_bytes_saved_total", {"reason"}),
    "cache hits": ("scarlet_cache_hits_total", set()),
    "cache misses": ("scarlet_cache_misses_total", set()),
    "rounds completed": ("scarlet_rounds_completed_total", set()),
    "round duration histogram": ("scarlet_round_duration_seconds_bucket", {"le"}),
    "uploads accepted/rejected/duplicate": ("scarlet_uploads_total", {"outcome"}),
    "dead-lettered messages": ("scarlet_dead_letters_total", set()),
    "server accuracy gauge": ("scarlet_server_accuracy", set()),
    "client accuracy gauge": ("scarlet_client_accuracy", set()),
    "worker train/distill/predict durations": ("scarlet_worker_phase_seconds_bucket", {"phase"}),
}
# label values DESIGN §6 (and the dashboard) name explicitly
DESIGN_VALUES = {
    ("scarlet_bytes_saved_total", "reason"): {"cache", "compression"},
    ("scarlet_uploads_total", "outcome"): {"accepted", "rejected", "duplicate"},
    ("scarlet_worker_phase_seconds_bucket", "phase"): {"train", "distill", "predict"},
    ("scarlet_bytes_total", "direction"): {"up", "down"},
}
# the additions: lag, per-round bytes, cache sync, overhead
EXTRA = {
    "scarlet_round_age_seconds",
    "scarlet_clients_missing",
    "scarlet_round_bytes",
    "scarlet_cache_sync_requests_total",
    "scarlet_bytes_overhead_total",
    "scarlet_cache_version",
    "scarlet_server_top5_accuracy",
}
# labels that would carry an id: one series per client, round, run, worker or request
ID_LABELS = re.compile(r"(client|round|run|worker|request|instance|pod|host|id)", re.I)


@pytest.fixture(scope="module")
def families() -> list[Metric]:
    return list(Metrics.create(CollectorRegistry()).registry.collect())


def _samples(families: list[Metric]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


def test_every_metric_design_6_names_is_exposed_with_its_labels(families):
    samples = _samples(families)
    for item, (name, labels) in DESIGN_6.items():
        assert name in samples, f"DESIGN §6 {item!r}: {name} is not exposed"
        assert labels <= set(samples[name][0]), f"{name} lacks labels {labels}"
    for (name, label), values in DESIGN_VALUES.items():
        present = {s[label] for s in samples[name]}
        assert values <= present, f"{name}{{{label}}} misses {values - present}"
    assert set(samples) >= EXTRA


def test_every_name_has_the_prefix_and_counters_end_in_total(families):
    for family in families:
        assert family.name.startswith("scarlet_"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            else:
                assert not sample.name.endswith("_total"), f"a {family.type} named {sample.name}"


def test_no_label_is_an_id_and_every_label_takes_values_from_a_closed_set(families):
    for family in families:
        for sample in family.samples:
            for label in sample.labels:
                if label == "le":
                    continue
                assert not ID_LABELS.search(label), f"{family.name} has an id label {label!r}"
                allowed = LABEL_VALUES[family.name][label]
                assert sample.labels[label] in allowed


def test_every_labelled_series_exists_at_zero_before_the_first_event():
    registry = CollectorRegistry()
    Metrics.create(registry)
    get = registry.get_sample_value
    assert get("scarlet_uploads_total", {"outcome": "late"}) == 0
    assert get("scarlet_cache_sync_requests_total", {"outcome": "store_error"}) == 0
    assert get("scarlet_bytes_total", {"direction": "down", "kind": "task"}) == 0
    # tasks never go up, uploads never go down: no such series
    assert get("scarlet_bytes_total", {"direction": "up", "kind": "task"}) is None
    buckets = {"phase": "train", "le": "+Inf"}
    assert get("scarlet_worker_phase_seconds_bucket", buckets) == 0


def test_two_catalogues_in_two_registries_do_not_collide():
    a, b = Metrics.create(CollectorRegistry()), Metrics.create(CollectorRegistry())
    a.rounds_completed_total.inc()
    assert b.registry.get_sample_value("scarlet_rounds_completed_total") == 0


def test_the_exposition_is_small(families):
    # every process exposes the whole catalogue: keep it to a few hundred lines
    text = generate_latest(Metrics.create(CollectorRegistry()).registry).decode()
    assert len(text.splitlines()) < 400


def test_the_operations_guide_documents_every_metric(families):
    guide = (ROOT / "docs" / "OPERATIONS.md").read_text()
    exposed = set()
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        exposed.add(name)
    missing = sorted(n for n in exposed if f"`{n}" not in guide)
    assert missing == []


def test_the_aggregator_accounts_every_completed_round_so_that_savings_add_up():
    # an embedded round updates the counters exactly as the services do
    from scarlet.simulate import EmbeddedFederation, prepare_data
    from shared.config import FederationConfig

    config = FederationConfig(
        dataset="digits",
        clients=2,
        samples_per_client=100,
        public_size=120,
        public_per_round=60,
        rounds=2,
        test_per_client=20,
        local_epochs=1,
        distill_epochs=1,
        server_distill_epochs=1,
        cache_duration=1,
    )
    metrics = Metrics.create(CollectorRegistry())
    results = EmbeddedFederation(config, prepare_data(config), metrics).run()
    get = metrics.registry.get_sample_value

    def total(name: str, label: str, values: tuple[str, ...]) -> float:
        return sum(get(name, {label: v}) or 0.0 for v in values)

    s = results.summary()
    sent = sum(
        get("scarlet_bytes_total", {"direction": d, "kind": k}) or 0.0
        for d, k in (
            ("down", "task"),
            ("up", "upload"),
            ("up", "cache_sync"),
            ("down", "cache_sync"),
        )
    )
    baseline = total("scarlet_baseline_bytes_total", "direction", ("up", "down"))
    saved = total("scarlet_bytes_saved_total", "reason", ("cache", "compression"))
    overhead = total("scarlet_bytes_overhead_total", "reason", ("cache", "compression"))
    assert sent == s["wire_bytes_total"]
    assert baseline == s["baseline_bytes_total"]
    assert baseline - sent == saved - overhead
    net_cache = get("scarlet_bytes_saved_total", {"reason": "cache"}) - get(
        "scarlet_bytes_overhead_total", {"reason": "cache"}
    )
    assert net_cache == s["saved_by_cache_bytes"]
    last = results.rounds[-1]
    assert get("scarlet_round_bytes", {"direction": "up", "accounting": "wire"}) == (
        last.wire_bytes_up
    )
    assert get("scarlet_rounds_completed_total") == config.rounds
    assert get("scarlet_round_age_seconds") == 0  # no round open once finished
    assert math.isclose(get("scarlet_server_accuracy"), last.server_accuracy)
    assert math.isclose(get("scarlet_server_top5_accuracy"), last.server_top5)
    assert last.server_accuracy <= last.server_top5 <= 1


def test_scarlet_up_assigns_one_metrics_port_per_process_and_writes_the_targets(tmp_path):
    config = FederationConfig(
        run_id="obs",
        dataset="digits",
        clients=3,
        public_size=200,
        public_per_round=50,
        samples_per_client=100,
    )
    settings = ServiceSettings(metrics_port=9400, worker_mode="pool")
    launcher = Launcher(config, settings, 2, tmp_path / "runs" / "obs")
    path = launcher.write_config()
    assert launcher.metrics_ports() == {
        "cache": 9400,
        "aggregator": 9401,
        "worker-0": 9402,
        "worker-1": 9403,
    }
    # the shared file leaves metrics off: each child gets its own port as a flag
    assert "metrics_port = 0" in path.read_text()
    targets = json.loads((tmp_path / "runs" / "targets" / "obs.json").read_text())
    assert targets == [
        {"targets": ["127.0.0.1:9400"], "labels": {"service": "cache"}},
        {"targets": ["127.0.0.1:9401"], "labels": {"service": "aggregator"}},
        {"targets": ["127.0.0.1:9402", "127.0.0.1:9403"], "labels": {"service": "worker"}},
    ]
    launcher.clear_targets()
    assert json.loads(launcher.targets_file.read_text()) == []
    off = Launcher(config, ServiceSettings(), 2, tmp_path / "off")
    off.write_config()
    assert off.metrics_ports() == {} and not off.targets_file.exists()


def test_the_cache_service_counts_requests_by_outcome_and_its_traffic_as_overhead():
    import uuid

    from services.cache.service import CacheService
    from shared.protocol.cache_sync import HEADER_REQUEST_ID, CacheSyncRequest, encode_sync_request
    from shared.protocol.codec import DecodeLimits
    from shared.protocol.routes import cache_rpc_queue, replies_exchange, reply_queue
    from shared.state.memory import MemoryFederationStore
    from shared.transport.base import QueueSpec
    from shared.transport.memory import InMemoryTransport

    run = "metrics"
    transport = InMemoryTransport()
    metrics = Metrics.create(CollectorRegistry())
    service = CacheService(
        transport, MemoryFederationStore(run), run, DecodeLimits(100, 10), metrics
    )
    service.declare()
    reply = reply_queue(run, "w1")
    transport.declare(
        queues=[QueueSpec(reply, ((replies_exchange(run), reply),), dead_letter=True)]
    )
    sent = 0
    for reply_to in (reply, reply, reply_queue(run, "gone")):
        request = CacheSyncRequest(run, 0, uuid.uuid4().hex, None, reply_to)
        body = encode_sync_request(request)
        transport.publish("", cache_rpc_queue(run), body, {HEADER_REQUEST_ID: request.request_id})
        sent += len(body)
    transport.publish("", cache_rpc_queue(run), b"not msgpack", {})
    sent += len(b"not msgpack")
    while service.serve_once(0.05):
        pass
    replies = 0
    while (delivery := transport.get(reply, timeout_s=0.05)) is not None:
        replies += len(delivery.body)
        delivery.ack()
    get = metrics.registry.get_sample_value
    outcomes = {"answered": 2, "unroutable": 1, "invalid": 1, "store_error": 0}
    for outcome, count in outcomes.items():
        assert get("scarlet_cache_sync_requests_total", {"outcome": outcome}) == count, outcome
    assert get("scarlet_dead_letters_total", {"kind": "cache_sync"}) == 2
    up = get("scarlet_bytes_total", {"direction": "up", "kind": "cache_sync"})
    down = get("scarlet_bytes_total", {"direction": "down", "kind": "cache_sync"})
    assert (up, down) == (sent, replies) and replies > 0
    assert get("scarlet_bytes_overhead_total", {"reason": "cache_sync"}) == up + down
