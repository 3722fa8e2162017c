"""Does a task fit this client's state? The pure rule a worker applies before any work.

A task is *new* (do it), a *redelivery* (answer it from the saved state) or a *misfit*
(dead-letter it; nothing about it is recorded). Misfits are what the aggregator could not
have sent for this client:

- another run, or a round outside ``[0, rounds)`` (e.g. a forged round 999: recorded as
  done, it would make every later real task look like a redelivery);
- a client that the round's deterministic draw (seed, round) did not sample;
- request indices that are not a subset of the round's drawn public indices;
- distillation targets that are not round t-1's (none in round 0, some after), or
  whose rows per index are not the algorithm's (COMET: ``comet_clusters``; else 1);
- a cache version above the round (the version grows by one per committed round).

Rounds ahead of ``completed_round + 1`` are *not* misfits: with partial participation or
a deadline that closed a round without this client, a client legitimately skips rounds.
Such a task must still restore its targets cleanly (digest) before any work is done; the
handler checks that after this rule.

This rule sees only what the task says; it cannot tell a well-formed forgery from the
aggregator's task. That is the sender check's job (the broker's ``user_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from shared.config import FederationConfig
from shared.protocol.messages import TrainTask
from shared.rounds.aggregator import drawn_public_indices, sampled_clients

__all__ = ["Fit", "Verdict", "judge_task"]


class Fit(StrEnum):
    """What to do with a task."""

    NEW = "new"
    REDELIVERY = "redelivery"
    MISFIT = "misfit"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule's answer; ``reason`` says why a task is a misfit (empty otherwise)."""

    fit: Fit
    reason: str = ""


def judge_task(task: TrainTask, config: FederationConfig, completed_round: int) -> Verdict:
    """Judge ``task`` for a client that produced uploads up to ``completed_round``.

    Args:
        task: the decoded task (its client id is this worker's client).
        config: the federation's configuration.
        completed_round: the last round this client uploaded for (-1: none yet).

    Returns:
        NEW for a round after ``completed_round`` that fits, REDELIVERY for one at or
        before it (the cheap checks first: a redelivery needs no draw), MISFIT otherwise.
    """
    if task.run_id != config.run_id:
        return _misfit(f"task of run {task.run_id!r}, this is run {config.run_id!r}")
    t = task.round
    if not 0 <= t < config.rounds:
        return _misfit(f"round {t} outside the run's rounds [0, {config.rounds})")
    if not 0 <= task.cache_version <= t:
        return _misfit(f"cache version {task.cache_version} does not fit round {t}")
    targets_round = None if task.targets is None else task.targets.round
    if targets_round != (t - 1 if t > 0 else None):
        return _misfit(f"round {t} carries targets of round {targets_round}")
    clusters = config.comet_clusters if config.algorithm == "comet" else 1
    if task.targets is not None and task.targets.clusters != clusters:
        return _misfit(
            f"round {t} carries {task.targets.clusters} label rows per index, "
            f"{config.algorithm} sends {clusters}"
        )
    if t <= completed_round:
        return Verdict(Fit.REDELIVERY)
    if task.client_id not in sampled_clients(config, t):
        return _misfit(f"client {task.client_id} was not sampled in round {t}")
    drawn = drawn_public_indices(config, t)
    if not bool(np.isin(task.request_indices, drawn).all()):
        return _misfit(f"round {t} requests public indices that were not drawn")
    return Verdict(Fit.NEW)


def _misfit(reason: str) -> Verdict:
    return Verdict(Fit.MISFIT, reason)
