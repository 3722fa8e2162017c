"""The metric catalogue: every Prometheus metric of every service, declared once.

Build a :class:`Metrics` from the registry the caller owns (tests pass a fresh
``CollectorRegistry()``); nothing registers in the global registry at import time.
Labels stay low-cardinality: no client, round or run ids (those go in logs). Every label
takes its values from a fixed set (:data:`LABEL_VALUES`), and every such series is
created at zero up front, so a dashboard query finds a series before the first event
(``increase`` of a series that appears at 1 would miss that first event).

Byte accounting (``docs/OPERATIONS.md`` has the whole reference):

* ``scarlet_bytes_total{direction,kind}`` counts real message bodies where they are
  published: tasks by the aggregator, uploads by the workers, cache-sync traffic by the
  cache service (replies as published, requests as received: they are its input).
* ``scarlet_baseline_bytes_total`` / ``scarlet_paper_bytes_total`` and the savings are the
  aggregator's per-round ledger, counted when a round completes.
* ``scarlet_bytes_saved_total{reason} - scarlet_bytes_overhead_total{reason}`` summed over
  reasons equals ``baseline - bytes``: ``cache`` is ``baseline - paper``, ``compression``
  is ``paper - wire`` of the completed rounds, and ``cache_sync`` (overhead only) is the
  cache-sync traffic, which DS-FL never needs. A counter only grows, so a negative saving
  is counted as overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DIRECTIONS", "LABEL_VALUES", "Metrics"]

DIRECTIONS = ("up", "down")
_ROUND_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

LABEL_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    # metric name (as exposed, without _total) -> label -> every value it may take
    "scarlet_bytes": {"direction": DIRECTIONS, "kind": ("task", "upload", "cache_sync")},
    "scarlet_baseline_bytes": {"direction": DIRECTIONS},
    "scarlet_paper_bytes": {"direction": DIRECTIONS},
    "scarlet_round_bytes": {
        "direction": DIRECTIONS,
        "accounting": ("wire", "paper", "baseline"),
    },
    "scarlet_bytes_saved": {"reason": ("cache", "compression")},
    "scarlet_bytes_overhead": {"reason": ("cache", "compression", "cache_sync")},
    "scarlet_soft_labels": {"direction": DIRECTIONS},
    "scarlet_cache_signals": {"signal": ("cached", "newly_cached", "expired")},
    "scarlet_cache_resyncs": {"kind": ("snapshot", "refused")},
    "scarlet_cache_sync_requests": {
        "outcome": ("answered", "invalid", "store_unavailable", "store_error", "unroutable")
    },
    "scarlet_round_phase_seconds": {"phase": ("select", "collect", "aggregate", "distill")},
    "scarlet_uploads": {"outcome": ("accepted", "duplicate", "late", "rejected", "invalid")},
    "scarlet_dead_letters": {"kind": ("upload", "task", "cache_sync")},
    "scarlet_rejected_bytes": {"kind": ("duplicate", "late", "rejected", "invalid", "forged")},
    "scarlet_worker_phase_seconds": {"phase": ("distill", "train", "predict")},
    "scarlet_worker_tasks": {
        "outcome": (
            "done",
            "invalid",
            "foreign",
            "misfit",
            "desync",
            "unrepairable",
            "stale",
            "redelivered",
        )
    },
}
"""The closed set of values of every label (pre-created at zero by :meth:`Metrics.create`)."""


@dataclass(frozen=True)
class Metrics:
    """All metrics, bound to one registry."""

    registry: CollectorRegistry
    bytes_total: Counter
    baseline_bytes_total: Counter
    paper_bytes_total: Counter
    round_bytes: Gauge
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
    round_age_seconds: Gauge
    round_duration_seconds: Histogram
    round_phase_seconds: Histogram
    uploads_total: Counter
    dead_letters_total: Counter
    rejected_bytes_total: Counter
    server_accuracy: Gauge
    server_top5: Gauge
    client_accuracy: Gauge
    worker_phase_seconds: Histogram
    worker_tasks_total: Counter
    clients_missing: Gauge
    tasks_republished_total: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Declare every metric in ``registry`` (a new one by default).

        Every labelled series of :data:`LABEL_VALUES` is created at zero.
        """
        r = registry if registry is not None else CollectorRegistry()
        metrics = cls(
            registry=r,
            bytes_total=Counter(
                "scarlet_bytes",
                "Message body bytes, counted where published (cache-sync requests where received)",
                ["direction", "kind"],
                registry=r,
            ),
            baseline_bytes_total=Counter(
                "scarlet_baseline_bytes",
                "Bytes DS-FL with float32 soft labels would have sent for the completed rounds",
                ["direction"],
                registry=r,
            ),
            paper_bytes_total=Counter(
                "scarlet_paper_bytes",
                "Bytes of the completed rounds under the paper's tensor accounting "
                "(float32 4 B, int64 8 B)",
                ["direction"],
                registry=r,
            ),
            round_bytes=Gauge(
                "scarlet_round_bytes",
                "Bytes of the last completed round: wire (message bodies), paper, and the "
                "DS-FL float32 baseline",
                ["direction", "accounting"],
                registry=r,
            ),
            bytes_saved_total=Counter(
                "scarlet_bytes_saved",
                "Bytes saved against the DS-FL float32 baseline, by reason",
                ["reason"],
                registry=r,
            ),
            bytes_overhead_total=Counter(
                "scarlet_bytes_overhead",
                "Bytes spent above the DS-FL float32 baseline (negative savings), by reason",
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
                "Cache-sync RPC requests handled by the cache service, by outcome",
                ["outcome"],
                registry=r,
            ),
            rounds_completed_total=Counter(
                "scarlet_rounds_completed", "Rounds closed by the aggregator", registry=r
            ),
            current_round=Gauge("scarlet_round", "Round the aggregator is in", registry=r),
            round_age_seconds=Gauge(
                "scarlet_round_age_seconds",
                "Seconds since the current round opened (0 while no round is open)",
                registry=r,
            ),
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
            rejected_bytes_total=Counter(
                "scarlet_rejected_bytes",
                "Upload body bytes that reached the aggregator but were not aggregated, by "
                "outcome (never part of the wire bytes)",
                ["kind"],
                registry=r,
            ),
            server_accuracy=Gauge(
                "scarlet_server_accuracy",
                "Server model top-1 accuracy on the test split",
                registry=r,
            ),
            server_top5=Gauge(
                "scarlet_server_top5_accuracy",
                "Server model top-5 accuracy on the test split",
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
            clients_missing=Gauge(
                "scarlet_clients_missing",
                "Sampled clients of the current round whose upload has not arrived",
                registry=r,
            ),
            tasks_republished_total=Counter(
                "scarlet_tasks_republished",
                "Tasks published again because a round passed its deadline below the "
                "minimum quorum",
                registry=r,
            ),
        )
        metrics._create_series()
        return metrics

    def _create_series(self) -> None:
        """Create every labelled series of :data:`LABEL_VALUES` at zero."""
        by_name = {
            next(iter(m.describe())).name: m
            for m in vars(self).values()
            if isinstance(m, Counter | Gauge | Histogram)
        }
        for name, labels in LABEL_VALUES.items():
            metric = by_name[name]
            keys = list(labels)
            combos: list[dict[str, str]] = [{}]
            for key in keys:
                combos = [{**c, key: v} for c in combos for v in labels[key]]
            for combo in combos:
                if name == "scarlet_bytes" and not _valid_bytes_series(combo):
                    continue
                metric.labels(**combo)


def _valid_bytes_series(labels: dict[str, str]) -> bool:
    """Tasks only go down, uploads only up; cache-sync traffic goes both ways."""
    kind, direction = labels["kind"], labels["direction"]
    return kind == "cache_sync" or (kind, direction) in (("task", "down"), ("upload", "up"))
