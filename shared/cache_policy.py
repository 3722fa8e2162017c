"""SCARLET's synchronized soft-label cache: the rules, pure and vectorized.

Semantics follow the ``reproducibility`` branch of the official code (PAPER.md §2.1):

* a label written (cached) in round c is **reused in rounds c+1 .. c+D** (D = cache
  duration); :func:`is_fresh` is the one place this boundary is written down;
* when the aggregator plans round t, a drawn public index is *reused* iff its entry is
  present and fresh at t, otherwise it is *requested* from the clients;
* when round t is committed, every index of the round's distillation set gets a signal:
  ``NEWLY_CACHED`` (was absent: store the fresh label with round t), ``CACHED`` (was
  fresh: nothing changes, nothing is resent) or ``EXPIRED`` (present but stale: the
  entry is **cleared** on both sides; the fresh label is used this round only);
* the downlink of round t+1 carries labels only for non-``CACHED`` entries; a client
  restores the full target matrix from those and its replica (:meth:`ClientCache.restore`);
* under partial participation the aggregator keeps a mirror of what each client holds
  (:class:`ClientMirrors`) and sends a sampled client a catch-up diff against the
  pre-commit global entries of the distillation set before the signals.

Entries are identified by the round they were written in: a (index, written round) pair
names exactly one label, so replicas are compared by rounds, never by float equality.

Arrays are numpy (:mod:`shared.arrays`): the cache rules run in the aggregator, the
workers and the tests alike, and need no model (DECISIONS §28).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from shared import digests
from shared.arrays import BoolArray, IndexArray, LabelArray
from shared.errors import CacheDesync, RoundStateConflict

__all__ = [
    "NEVER",
    "catch_up_diff",
    "adaptive_reuse",
    "window_reuse",
    "CacheCommit",
    "CacheSignal",
    "CatchUpDiff",
    "ClientCache",
    "ClientMirrors",
    "RequestPlan",
    "ServerCache",
    "is_fresh",
    "targets_digest",
]

NEVER = -1
"""Written-round value of an empty entry."""


class CacheSignal(IntEnum):
    """Per-index cache signal sent downlink (values of the official ``main`` branch)."""

    CACHED = 0
    NEWLY_CACHED = 1
    EXPIRED = 2


def is_fresh(written_round: IndexArray | int, now: int, duration: int) -> BoolArray:
    """Whether an entry written in round ``written_round`` may be reused in round ``now``.

    A label cached in round c is reused in rounds c+1 .. c+D (D = ``duration``): the age
    ``now - c`` must lie in [1, D]. An empty entry (``NEVER``) is never fresh. With D = 0
    nothing is ever reused.

    Args:
        written_round: scalar or (N,) int64 array of written rounds (``NEVER`` if empty).
        now: the round in which the entry would be reused.
        duration: D ≥ 0.

    Returns:
        A bool array of the same shape as ``written_round``.
    """
    written = np.asarray(written_round, dtype=np.int64)
    age = now - written
    fresh: BoolArray = (written != NEVER) & (age >= 1) & (age <= duration)
    return fresh


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """How a round's drawn public indices split. Both arrays are int64, ascending."""

    requested: IndexArray
    reused: IndexArray

    @property
    def distill_indices(self) -> IndexArray:
        """The round's distillation set: requested first, then reused (PAPER.md §2.1)."""
        return np.concatenate([self.requested, self.reused])


@dataclass(frozen=True, slots=True)
class CacheCommit:
    """What committing a round changed; everything the next downlink needs.

    Attributes:
        round: the committed round t.
        indices: (n,) the distillation set, requested first then reused.
        signals: (n,) int64 :class:`CacheSignal` codes.
        targets: (n, C) float32 global soft labels for server distillation.
        fresh_labels: (n_fresh, C) rows of ``targets`` whose signal is not CACHED.
        previous_written: (n,) written rounds of the entries *before* the commit.
        previous_labels: (n, C) labels of the entries before the commit (zeros if empty).
    """

    round: int
    indices: IndexArray
    signals: IndexArray
    targets: LabelArray
    fresh_labels: LabelArray
    previous_written: IndexArray
    previous_labels: LabelArray


class ServerCache:
    """The authoritative global cache C_g: one (label, written round) per public index."""

    def __init__(self, public_size: int, num_classes: int) -> None:
        self.labels: LabelArray = np.zeros((public_size, num_classes), dtype=np.float32)
        self.written: IndexArray = np.full(public_size, NEVER, dtype=np.int64)
        self.version = 0

    @property
    def public_size(self) -> int:
        """|P|."""
        return int(self.written.size)

    def plan_requests(
        self, drawn: IndexArray, now: int, duration: int, *, reuse: BoolArray | None = None
    ) -> RequestPlan:
        """Split round ``now``'s drawn indices into requested and reused (both ascending).

        Args:
            drawn: (n,) distinct int64 public indices I_t.
            now: the round t being planned.
            duration: D.
            reuse: (n,) bool decision of an adaptive policy (see :func:`adaptive_reuse`);
                None applies the paper's rule, :func:`is_fresh`.
        """
        fresh = is_fresh(self.written[drawn], now, duration) if reuse is None else reuse
        return RequestPlan(requested=np.sort(drawn[~fresh]), reused=np.sort(drawn[fresh]))

    def commit(
        self,
        plan: RequestPlan,
        fresh_labels: LabelArray,
        now: int,
        duration: int,
        *,
        max_age: int | None = None,
        keep: BoolArray | None = None,
    ) -> CacheCommit:
        """Apply round ``now``'s signals: the server half of the synchronization.

        Args:
            plan: the plan made for this round by :meth:`plan_requests`.
            fresh_labels: (q, C) aggregated, sharpened labels of ``plan.requested``, exactly
                as clients will decode them.
            now: the round t.
            duration: D.
            max_age: None for the paper's rule. With an adaptive policy, the oldest age a
                reused entry may have; requested entries that are present are then
                *refreshed* (overwritten, signalled NEWLY_CACHED) instead of expired.
            keep: (q,) bool over ``plan.requested``, the ``cache_ratio`` draw: an absent
                entry is cached only where True, elsewhere its fresh label serves this
                round only (signalled EXPIRED, whose clear is a no-op on an absent entry).
                None caches every absent entry. Only for the paper's rule (no max_age).

        Returns:
            The commit, with per-index signals and the full target matrix.

        Raises:
            RoundStateConflict: when the cache changed since the plan (a reused entry is
                no longer fresh, or a requested one became fresh) or shapes disagree.
        """
        if fresh_labels.shape != (plan.requested.size, self.labels.shape[1]):
            raise RoundStateConflict(
                f"commit: round={now} expected labels of shape "
                f"{(plan.requested.size, self.labels.shape[1])}, got {tuple(fresh_labels.shape)}"
            )
        indices = plan.distill_indices
        previous_written = self.written[indices]  # fancy indexing copies
        previous_labels = self.labels[indices]
        q = plan.requested.size
        if max_age is None:
            fresh = is_fresh(previous_written, now, duration)
            consistent = not bool(fresh[:q].any()) and bool(fresh[q:].all())
        else:
            consistent = bool(is_fresh(previous_written[q:], now, max_age).all())
        if not consistent:
            raise RoundStateConflict(
                f"commit: round={now} cache changed since the round was planned"
            )
        if keep is not None and (max_age is not None or keep.shape != (q,)):
            raise RoundStateConflict(
                f"commit: round={now} a keep mask needs the paper's rule and shape {(q,)}"
            )
        # with an adaptive policy a requested entry that is present is refreshed in place
        was_empty = (previous_written[:q] == NEVER) | (max_age is not None)
        stored = was_empty if keep is None else was_empty & keep
        signals = np.full(indices.size, int(CacheSignal.CACHED), dtype=np.int64)
        signals[:q] = np.where(stored, int(CacheSignal.NEWLY_CACHED), int(CacheSignal.EXPIRED))
        newly, expired = plan.requested[stored], plan.requested[~stored]
        self.labels[newly] = fresh_labels[stored]
        self.written[newly] = now
        self.labels[expired] = 0.0
        self.written[expired] = NEVER
        self.version += 1
        targets = np.concatenate([fresh_labels.astype(np.float32), previous_labels[q:]])
        return CacheCommit(
            now, indices, signals, targets, targets[:q].copy(), previous_written, previous_labels
        )

    def digest(self) -> str:
        """SHA-256 over the written rounds and the labels of present entries (hex)."""
        return _digest(self.written, self.labels)


def adaptive_reuse(
    written: IndexArray,
    now: int,
    duration: int,
    max_duration: int,
    drift: LabelArray,
    threshold: float,
) -> BoolArray:
    """Staleness-aware reuse: refresh drifted entries early, keep stable ones longer.

    An entry of age a (= now - written) is reused when it is present and either
    a is within the paper's window (``is_fresh`` with D) and its drift is at most
    ``threshold``, or D < a <= ``max_duration`` and its drift is at most ``threshold / 2``.

    Args:
        written: (n,) written rounds of the drawn entries (``NEVER`` when empty).
        now: the round being planned.
        duration: D.
        max_duration: the longest reuse of a stable entry (>= D).
        drift: (n,) distance in [0, 1] between each cached label and what the federation
            now predicts for the sample (e.g. total variation to the server model's
            sharpened prediction).
        threshold: drift above which an entry is refreshed even inside the window.

    Returns:
        (n,) bool: True where the cached label is reused.
    """
    inside = is_fresh(written, now, duration) & (drift <= threshold)
    longer = is_fresh(written, now, max_duration) & ~is_fresh(written, now, duration)
    return inside | (longer & (drift <= threshold / 2))


def window_reuse(written: IndexArray, now: int, max_age: int) -> BoolArray:
    """The sliding policy's reuse decision: the one freshness predicate, bounded by the window.

    An entry is reused when it is fresh within ``max_age`` rounds (:func:`is_fresh`), where
    ``max_age`` is the number of rounds a sample stays in the window, capped by D. Asking
    the server model whether a fresh entry drifted (as the adaptive policy does) was
    measured not to help here (docs/EXPERIMENTS.md, "The sliding cache"), so it does not.

    Args:
        written: (n,) written rounds of the drawn entries (``NEVER`` when empty).
        now: the round being planned.
        max_age: the oldest reusable age.
    """
    return is_fresh(written, now, max_age)


class ClientCache:
    """A client's replica C_k of the global cache."""

    def __init__(self, public_size: int, num_classes: int) -> None:
        self.labels: LabelArray = np.zeros((public_size, num_classes), dtype=np.float32)
        self.written: IndexArray = np.full(public_size, NEVER, dtype=np.int64)

    def apply_catch_up(self, diff: CatchUpDiff) -> None:
        """Bring the replica in line with the pre-commit global entries (partial participation)."""
        self.labels[diff.update_indices] = diff.update_labels
        self.written[diff.update_indices] = diff.update_written
        self.labels[diff.clear_indices] = 0.0
        self.written[diff.clear_indices] = NEVER

    def restore(
        self, round_no: int, indices: IndexArray, signals: IndexArray, fresh_labels: LabelArray
    ) -> LabelArray:
        """Rebuild round ``round_no``'s targets and apply its signals: the client half.

        Walks ``indices`` in order: a non-CACHED entry takes the next row of
        ``fresh_labels``; a CACHED one reads the replica. NEWLY_CACHED rows are stored with
        ``round_no``; EXPIRED entries are cleared.

        Args:
            round_no: the round t whose signals these are.
            indices: (n,) int64 distillation set of round t.
            signals: (n,) int64 :class:`CacheSignal` codes.
            fresh_labels: (n_fresh, C) labels of the non-CACHED entries, in order.

        Returns:
            (n, C) float32 targets for distillation.

        Raises:
            CacheDesync: when a CACHED entry is missing from the replica or the number of
                fresh rows does not match the signals. The replica is left unchanged.
        """
        cached = signals == int(CacheSignal.CACHED)
        if int((~cached).sum()) != fresh_labels.shape[0]:
            raise CacheDesync(
                f"restore: round={round_no} {int((~cached).sum())} fresh entries "
                f"signalled but {fresh_labels.shape[0]} labels received"
            )
        missing = indices[cached][self.written[indices[cached]] == NEVER]
        if missing.size:
            raise CacheDesync(
                f"restore: round={round_no} {missing.size} entries signalled "
                f"CACHED are not in the replica (first: {int(missing[0])})"
            )
        targets = np.empty((indices.size, self.labels.shape[1]), dtype=np.float32)
        targets[~cached] = fresh_labels
        targets[cached] = self.labels[indices[cached]]
        newly = indices[signals == int(CacheSignal.NEWLY_CACHED)]
        self.labels[newly] = targets[signals == int(CacheSignal.NEWLY_CACHED)]
        self.written[newly] = round_no
        expired = indices[signals == int(CacheSignal.EXPIRED)]
        self.labels[expired] = 0.0
        self.written[expired] = NEVER
        return targets

    def digest(self) -> str:
        """SHA-256 over the written rounds and labels of present entries (hex)."""
        return _digest(self.written, self.labels)


@dataclass(frozen=True, slots=True)
class CatchUpDiff:
    """Entries to set or clear in a client replica before it applies a round's signals."""

    update_indices: IndexArray  # (u,) int64
    update_labels: LabelArray  # (u, C) float32
    update_written: IndexArray  # (u,) int64
    clear_indices: IndexArray  # (v,) int64

    @property
    def is_empty(self) -> bool:
        """True when the client is already in step."""
        return self.update_indices.size == 0 and self.clear_indices.size == 0


def catch_up_diff(held: IndexArray, commit: CacheCommit) -> CatchUpDiff:
    """The changes that bring a replica holding ``held`` on ``commit.indices`` to C_g.

    ``held`` is the written round of each of ``commit.indices`` in the replica (``NEVER``:
    empty); the target is C_g before ``commit`` (``commit.previous_written``): differing
    entries are updated, entries that C_g no longer has are cleared.
    """
    want = commit.previous_written
    update = (want != NEVER) & (held != want)
    clear = (want == NEVER) & (held != NEVER)
    return CatchUpDiff(
        update_indices=commit.indices[update],
        update_labels=commit.previous_labels[update],
        update_written=want[update],
        clear_indices=commit.indices[clear],
    )


class ClientMirrors:
    """The aggregator's record of which global entry every client holds.

    Only written rounds are kept ((K, |P|) int64): an entry is fully named by its round.
    """

    def __init__(self, num_clients: int, public_size: int) -> None:
        self.written: IndexArray = np.full((num_clients, public_size), NEVER, dtype=np.int64)

    def diff(self, client_id: int, commit: CacheCommit) -> CatchUpDiff:
        """What ``client_id`` must change so that its replica equals C_g before ``commit``."""
        return catch_up_diff(self.written[client_id, commit.indices], commit)

    def record_delivery(self, client_id: int, commit: CacheCommit, cache: ServerCache) -> None:
        """The client received ``commit``'s signals: it now holds C_g on those indices."""
        self.written[client_id, commit.indices] = cache.written[commit.indices]


def _digest(written: IndexArray, labels: LabelArray) -> str:
    # the stores hash their packed entries the same way: shared.digests owns the layout
    present = np.flatnonzero(written != NEVER)
    return digests.cache_digest(present, written[present], labels[present])


def targets_digest(targets: LabelArray) -> str:
    """SHA-256 (hex) of a restored target matrix (n, C) as float32 little-endian bytes.

    The aggregator sends it with each task; a client whose restored targets hash differently
    holds a desynchronized replica. The same as :func:`shared.digests.targets_digest`.
    """
    return digests.targets_digest(targets)
