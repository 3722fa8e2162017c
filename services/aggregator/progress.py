"""What the aggregator persists about the round in flight, beside the state machine.

The round state machine (:class:`~shared.rounds.aggregator.AggregatorCore`) knows the
protocol's phases (idle, collecting). The service adds one stage the protocol does not
have, *distilling*: the round is committed to the store but the server model has not been
distilled and evaluated yet. A restart in that stage distils again from the committed
targets instead of collecting again.

``IDLE --open--> COLLECTING --commit--> DISTILLING --record--> IDLE``

Everything here is a plain dataclass: :func:`~shared.protocol.plain.to_plain` and
:func:`~shared.protocol.plain.from_plain` (de)serialise it from its annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from shared.accounting import ByteLedger

__all__ = ["ClosedRound", "PendingTask", "RoundProgress", "Stage"]


class Stage(StrEnum):
    """Where the service is within a round."""

    IDLE = "idle"
    COLLECTING = "collecting"  # tasks built (maybe not all published yet); uploads arriving
    DISTILLING = "distilling"  # cache committed; server model not yet distilled


@dataclass(frozen=True, slots=True)
class PendingTask:
    """An encoded task, saved before it is published (and republished when overdue)."""

    client_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ClosedRound:
    """What the round's record needs from the closed round, kept across a restart."""

    round: int
    clients: tuple[int, ...]  # sampled
    contributors: tuple[int, ...]  # whose uploads were aggregated
    requested: int
    reused: int


@dataclass(slots=True)
class RoundProgress:
    """The service's durable view of the current round."""

    stage: Stage = Stage.IDLE
    tasks: list[PendingTask] = field(default_factory=list)  # the round's, kept to republish
    published: int = 0  # tasks[:published] went to the broker
    ledger: ByteLedger = field(default_factory=ByteLedger)
    uploads: dict[str, int] = field(default_factory=dict)  # outcome -> count
    client_accuracies: dict[int, float] = field(default_factory=dict)  # client -> accuracy
    started: float = 0.0  # wall-clock seconds (survives a restart, unlike a monotonic clock)
    closed: ClosedRound | None = None

    @property
    def unpublished(self) -> list[PendingTask]:
        """Tasks saved but not yet published (a restart publishes them)."""
        return self.tasks[self.published :]

    def count_upload(self, outcome: str) -> None:
        """One more upload with ``outcome`` this round."""
        self.uploads[outcome] = self.uploads.get(outcome, 0) + 1

    def mean_client_accuracy(self) -> float:
        """Mean accuracy the contributing clients reported (NaN if none did).

        Summed in client-id order: a float sum must not depend on arrival order.
        """
        values = [self.client_accuracies[k] for k in sorted(self.client_accuracies)]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
