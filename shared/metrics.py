"""The metric catalogue: every Prometheus metric of every service, declared once.

Build a :class:`Metrics` from the registry the caller owns (tests pass a fresh
``CollectorRegistry()``); nothing registers in the global registry at import time.
Labels stay low-cardinality: no client, round or run ids (those go in logs).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DIRECTIONS", "Metrics"]

DIRECTIONS = ("up", "down")
_ROUND_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class Metrics:
    """All metrics, bound to one registry."""

    registry: CollectorRegistry
    bytes_total: Counter
    baseline_bytes_total: Counter
    paper_bytes_total: Counter
    bytes_saved_total: Counter
    bytes_overhead_total: Counter
    soft_labels_total: Counter
    cache_hits_total: Counter
    cache_misses_total: Counter
    cache_signals_total: Counter
    cache_version: Gauge
    cache_resyncs_total: Counter
    cache_sync_requests_total: Counter
    rounds_completed_total: Counter
    current_round: Gauge
    round_duration_seconds: Histogram
    round_phase_seconds: Histogram
    uploads_total: Counter
    dead_letters_total: Counter
    server_accuracy: Gauge
    client_accuracy: Gauge
    worker_phase_seconds: Histogram
    worker_tasks_total: Counter
    upload_queue_depth: Gauge
    clients_missing: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Declare every metric in ``registry`` (a new one by default)."""
        r = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=r,
            bytes_total=Counter(
                "scarlet_bytes",
                "Message body bytes published",
                ["direction", "kind"],
                registry=r,
            ),
            baseline_bytes_total=Counter(
                "scarlet_baseline_bytes",
                "Bytes DS-FL with float32 soft labels would have sent for the same rounds",
                ["direction"],
                registry=r,
            ),
            paper_bytes_total=Counter(
                "scarlet_paper_bytes",
                "Bytes under the paper's tensor accounting (float32 4 B, int64 8 B)",
                ["direction"],
                registry=r,
            ),
            bytes_saved_total=Counter(
                "scarlet_bytes_saved",
                "Bytes saved against the DS-FL float32 baseline",
                ["reason"],
                registry=r,
            ),
            bytes_overhead_total=Counter(
                "scarlet_bytes_overhead",
                "Bytes spent above the DS-FL float32 baseline (negative savings)",
                ["reason"],
                registry=r,
            ),
            soft_labels_total=Counter(
                "scarlet_soft_labels", "Soft-label rows sent", ["direction"], registry=r
            ),
            cache_hits_total=Counter(
                "scarlet_cache_hits", "Drawn public samples served from the cache", registry=r
            ),
            cache_misses_total=Counter(
                "scarlet_cache_misses",
                "Drawn public samples requested from clients",
                registry=r,
            ),
            cache_signals_total=Counter(
                "scarlet_cache_signals", "Cache signals issued", ["signal"], registry=r
            ),
            cache_version=Gauge(
                "scarlet_cache_version", "Version of the global soft-label cache", registry=r
            ),
            cache_resyncs_total=Counter(
                "scarlet_cache_resyncs",
                "Worker cache replica resynchronizations",
                ["kind"],
                registry=r,
            ),
            cache_sync_requests_total=Counter(
                "scarlet_cache_sync_requests",
                "Cache-sync RPC requests served",
                ["outcome"],
                registry=r,
            ),
            rounds_completed_total=Counter(
                "scarlet_rounds_completed", "Rounds closed by the aggregator", registry=r
            ),
            current_round=Gauge("scarlet_round", "Round the aggregator is in", registry=r),
            round_duration_seconds=Histogram(
                "scarlet_round_duration_seconds",
                "Wall time of a whole round",
                buckets=_ROUND_BUCKETS,
                registry=r,
            ),
            round_phase_seconds=Histogram(
                "scarlet_round_phase_seconds",
                "Wall time of one aggregator phase",
                ["phase"],
                buckets=_PHASE_BUCKETS,
                registry=r,
            ),
            uploads_total=Counter(
                "scarlet_uploads", "Uploads received by outcome", ["outcome"], registry=r
            ),
            dead_letters_total=Counter(
                "scarlet_dead_letters", "Messages dead-lettered", ["kind"], registry=r
            ),
            server_accuracy=Gauge(
                "scarlet_server_accuracy",
                "Server model top-1 accuracy on the test split",
                registry=r,
            ),
            client_accuracy=Gauge(
                "scarlet_client_accuracy",
                "Mean client accuracy on their own test shards",
                registry=r,
            ),
            worker_phase_seconds=Histogram(
                "scarlet_worker_phase_seconds",
                "Worker time per phase of a task",
                ["phase"],
                buckets=_PHASE_BUCKETS,
                registry=r,
            ),
            worker_tasks_total=Counter(
                "scarlet_worker_tasks", "Tasks handled by workers", ["outcome"], registry=r
            ),
            upload_queue_depth=Gauge(
                "scarlet_upload_queue_depth", "Uploads waiting in the upload queue", registry=r
            ),
            clients_missing=Gauge(
                "scarlet_clients_missing",
                "Sampled clients whose upload has not arrived",
                registry=r,
            ),
        )
