"""Hooks the round loop calls at each step; the Prometheus metrics are one observer.

The round loop says what happened (a task published, an upload counted, a phase timed,
a round recorded) and never touches a metric itself, in the manner of Dramatiq's
middleware. :class:`MetricsObserver` turns the events into the catalogue's series
(``shared.metrics``); tests pass :class:`RoundObserver` itself, whose hooks do nothing,
or their own recorder.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from shared.arrays import IndexArray
from shared.cache_policy import CacheSignal
from shared.metrics import Metrics
from shared.results import RoundRecord

__all__ = ["MetricsObserver", "RoundObserver"]


class RoundObserver:
    """Events of the aggregator's round loop; every hook does nothing by default."""

    def round_opened(self, round_no: int) -> None:
        """Round ``round_no``'s tasks were built and saved."""

    def task_published(self, wire_bytes: int) -> None:
        """One task body of ``wire_bytes`` went to the broker."""

    def tasks_republished(self, count: int) -> None:
        """``count`` tasks of missing clients were published again (deadline, no quorum)."""

    def collect_started(self, round_age: Callable[[], float]) -> None:
        """Collecting began; ``round_age()`` tells the open round's age at any time."""

    def clients_missing(self, missing: int) -> None:
        """``missing`` sampled clients have not uploaded yet."""

    def upload_counted(self, outcome: str) -> None:
        """An upload was classified (accepted, duplicate, late, rejected, invalid)."""

    def upload_dead_lettered(self) -> None:
        """An upload that failed validation was dead-lettered."""

    def upload_refused(self, outcome: str, wire_bytes: int) -> None:
        """A body of ``wire_bytes`` was received but not aggregated (``outcome``)."""

    def phase_timed(self, phase: str, seconds: float) -> None:
        """A phase of the round (select, collect, aggregate, distill) took ``seconds``."""

    def round_recorded(self, record: RoundRecord, signals: IndexArray | None) -> None:
        """The round's record is final; ``signals`` are its cache signals (None: no cache)."""


class MetricsObserver(RoundObserver):
    """Feeds the Prometheus catalogue from the round loop's events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def round_opened(self, round_no: int) -> None:
        """Set the current-round gauge."""
        self.metrics.current_round.set(round_no)

    def task_published(self, wire_bytes: int) -> None:
        """Count the task's body bytes on the wire."""
        self.metrics.bytes_total.labels(direction="down", kind="task").inc(wire_bytes)

    def tasks_republished(self, count: int) -> None:
        """Count the republished tasks."""
        self.metrics.tasks_republished_total.inc(count)

    def collect_started(self, round_age: Callable[[], float]) -> None:
        """The round's age, evaluated at scrape time."""
        # a function gauge keeps counting while the loop is blocked on the broker
        self.metrics.round_age_seconds.set_function(round_age)

    def clients_missing(self, missing: int) -> None:
        """Set the missing-clients gauge."""
        self.metrics.clients_missing.set(missing)

    def upload_counted(self, outcome: str) -> None:
        """Count the upload by outcome."""
        self.metrics.uploads_total.labels(outcome=outcome).inc()

    def upload_dead_lettered(self) -> None:
        """Count the dead letter."""
        self.metrics.dead_letters_total.labels(kind="upload").inc()

    def upload_refused(self, outcome: str, wire_bytes: int) -> None:
        """Count the refused body's bytes by outcome (apart from the wire bytes)."""
        self.metrics.rejected_bytes_total.labels(kind=outcome).inc(wire_bytes)

    def phase_timed(self, phase: str, seconds: float) -> None:
        """Observe the phase duration."""
        self.metrics.round_phase_seconds.labels(phase=phase).observe(seconds)

    def round_recorded(self, record: RoundRecord, signals: IndexArray | None) -> None:
        """Bytes by accounting, savings, cache, accuracy and round series."""
        self._bytes(record)
        m, r = self.metrics, record
        m.cache_hits_total.inc(r.reused)
        m.cache_misses_total.inc(r.requested)
        m.cache_version.set(r.cache_version)
        m.rounds_completed_total.inc()
        m.round_duration_seconds.observe(r.seconds)
        m.server_accuracy.set(r.server_accuracy)
        m.server_top5.set(r.server_top5)
        if not math.isnan(r.client_accuracy):
            m.client_accuracy.set(r.client_accuracy)
        if signals is not None:
            counts = Counter(int(s) for s in signals.tolist())
            for signal in CacheSignal:
                m.cache_signals_total.labels(signal=signal.name.lower()).inc(counts[int(signal)])

    def _bytes(self, r: RoundRecord) -> None:
        m = self.metrics
        directions = {
            "up": (r.wire_bytes_up, r.paper_bytes_up, r.baseline_bytes_up, r.labels_up),
            "down": (r.wire_bytes_down, r.paper_bytes_down, r.baseline_bytes_down, r.labels_down),
        }
        for direction, (wire, paper, baseline, labels) in directions.items():
            m.paper_bytes_total.labels(direction=direction).inc(paper)
            m.baseline_bytes_total.labels(direction=direction).inc(baseline)
            m.soft_labels_total.labels(direction=direction).inc(labels)
            for accounting, value in (("wire", wire), ("paper", paper), ("baseline", baseline)):
                m.round_bytes.labels(direction=direction, accounting=accounting).set(value)
        wire = r.wire_bytes_up + r.wire_bytes_down
        paper = r.paper_bytes_up + r.paper_bytes_down
        baseline = r.baseline_bytes_up + r.baseline_bytes_down
        # a counter only grows: a negative saving (headers, signals) is counted as overhead
        for reason, saved in (("cache", baseline - paper), ("compression", paper - wire)):
            m.bytes_saved_total.labels(reason=reason).inc(max(0, saved))
            m.bytes_overhead_total.labels(reason=reason).inc(max(0, -saved))
