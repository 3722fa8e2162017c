"""When a round stops collecting uploads: the quorum and deadline rule, without I/O.

The service polls the uploads queue and, between polls, asks :func:`decide` what to do
with what it has. The rule (DESIGN §1 step 3, DECISIONS "quorum and deadline"):

- every sampled client has uploaded: **close**;
- the deadline (``round_timeout_s`` after collecting began) has passed and at least
  ``ceil(min_quorum · sampled)`` (at least one) uploads are in: **close at the deadline**
  with what is there;
- the deadline has passed without that minimum: **republish** the missing clients' tasks,
  then keep waiting (**overdue**) for another ``round_timeout_s``, and republish again
  when that runs out. A task can be lost without any process failing (a purged or
  deleted queue, a worker that dropped it); workers answer a task they already did with
  the same upload, so a republished task never counts twice. The round never closes
  below the minimum quorum: that is the operator's floor, and the
  ``ScarletRoundOverdue`` alert (on ``scarlet_tasks_republished_total``) says a round
  is stuck below it;
- otherwise **wait**.

A stop request (SIGTERM) wins over everything but a complete round: the round is left
as it is in the store and a restarted aggregator resumes collecting it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CollectAction", "CollectRule", "decide"]


class CollectAction(StrEnum):
    """What the collect loop does next."""

    WAIT = "wait"
    CLOSE = "close"  # every sampled client uploaded
    CLOSE_AT_DEADLINE = "close_at_deadline"  # deadline passed, minimum quorum met
    REPUBLISH = "republish"  # deadline passed, minimum not met: send missing tasks again
    OVERDUE = "overdue"  # deadline passed, minimum not met, republished: keep waiting
    STOP = "stop"  # asked to stop: leave the round open for a restart

    @property
    def closes(self) -> bool:
        """True when the round closes now with the uploads received."""
        return self in (CollectAction.CLOSE, CollectAction.CLOSE_AT_DEADLINE)


@dataclass(frozen=True, slots=True)
class CollectRule:
    """The quorum settings of one round.

    Attributes:
        sampled: the number of clients sampled this round (≥ 1).
        min_quorum: the share of them needed to close at the deadline, in (0, 1].
        timeout_s: seconds from the start of collecting to the deadline.
    """

    sampled: int
    min_quorum: float
    timeout_s: float

    @property
    def needed(self) -> int:
        """Uploads needed to close at the deadline: ``max(1, ceil(min_quorum · sampled))``."""
        return max(1, math.ceil(self.min_quorum * self.sampled))


def decide(
    rule: CollectRule,
    received: int,
    elapsed_s: float,
    *,
    stop: bool,
    republished: int = 0,
) -> CollectAction:
    """What to do with ``received`` accepted uploads, ``elapsed_s`` after collecting began.

    Args:
        rule: the round's quorum settings.
        received: distinct sampled clients whose upload was accepted.
        elapsed_s: seconds since collecting began (a restart starts the count again).
        stop: a stop was requested.
        republished: how often the missing tasks were republished in this collect; the
            n-th republication is due ``n · timeout_s`` after the start.
    """
    if received >= rule.sampled:
        return CollectAction.CLOSE
    if stop:
        return CollectAction.STOP
    if elapsed_s < rule.timeout_s:
        return CollectAction.WAIT
    if received >= rule.needed:
        return CollectAction.CLOSE_AT_DEADLINE
    if elapsed_s >= rule.timeout_s * (republished + 1):
        return CollectAction.REPUBLISH
    return CollectAction.OVERDUE
