"""The aggregator's half of a round as a state machine: plan, collect, aggregate, commit.

``IDLE --open_round--> COLLECTING --close_round--> IDLE`` (round number advanced).
No I/O, no clock: the caller decides *when* to close (quorum or deadline) and does the
publishing, the server-model distillation and the persistence.

Indices, signals and labels are numpy arrays, as the protocol and the cache rules hold
them; torch runs only the seeded draws and the aggregation math (:mod:`shared.distill`),
converted at that edge without copies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from shared.arrays import BoolArray, IndexArray, LabelArray
from shared.cache_policy import (
    NEVER,
    CacheCommit,
    RequestPlan,
    ServerCache,
    adaptive_reuse,
    targets_digest,
    window_reuse,
)
from shared.config import FederationConfig
from shared.distill import (
    kmeans_centroids,
    mean_by_index,
    sample_clients,
    sample_public_indices,
    sharpen,
)
from shared.distill.sampling import round_generator, sliding_window_positions
from shared.distill.selective import confident_rows
from shared.errors import RoundStateConflict
from shared.protocol.messages import CatchUp, DistillTargets, SoftLabelUpload, TrainTask
from shared.protocol.softlabels import roundtrip
from shared.rounds.mirrors import SparseClientMirrors

__all__ = [
    "AggregatorCore",
    "RoundPhase",
    "RoundResult",
    "UploadOutcome",
    "drawn_public_indices",
    "sampled_clients",
    "sliding_max_age",
    "sliding_stride",
]

_CLIENT_STREAM = 1
_PUBLIC_STREAM = 2
_WINDOW_STREAM = 3  # the sliding policy's run-wide permutation of the public set
_RATIO_STREAM = 4  # cache_ratio's draw of the entries a round caches
_CLUSTER_STREAM = 4  # COMET's k-means++ seeding (numpy's generator, not round_generator)


def sampled_clients(config: FederationConfig, round_no: int) -> tuple[int, ...]:
    """The clients sampled in round ``round_no`` (a function of the seed and the round).

    Workers use it too: a task for a client that was not sampled is not the aggregator's.
    """
    return tuple(
        sample_clients(
            config.clients,
            config.sample_ratio,
            round_generator(config.seed, round_no, _CLIENT_STREAM),
        )
    )


def drawn_public_indices(config: FederationConfig, round_no: int) -> IndexArray:
    """The public indices drawn in round ``round_no``; every request is a subset of them.

    A function of the config and the round only (never of the cache), so that a worker can
    check a task's requests against it. The sliding cache policy draws a window over one
    run-wide permutation (:func:`sliding_window_positions`); every other policy draws
    ``public_per_round`` indices uniformly, as the paper does.
    """
    if config.uses_cache and config.cache_policy == "sliding":
        order = _public_permutation(config.seed, config.public_size)
        positions = sliding_window_positions(
            config.public_size, config.public_per_round, sliding_stride(config), round_no
        )
        window: IndexArray = order[positions.numpy()]
        return window
    drawn: IndexArray = sample_public_indices(
        config.public_size,
        config.public_per_round,
        round_generator(config.seed, round_no, _PUBLIC_STREAM),
    ).numpy()
    return drawn


def sliding_stride(config: FederationConfig) -> int:
    """How many new public samples the sliding policy requests per round (at least 1)."""
    n = config.public_per_round
    return max(1, min(n, round(config.refresh_share * n)))


def sliding_max_age(config: FederationConfig) -> int:
    """The oldest entry the sliding policy reuses: min(D, rounds a sample stays in the window - 1).

    A sample stays ceil(n / stride) rounds in the window; an entry older than that was
    written on an earlier pass over the public set, so it is requested (and refreshed in
    place) instead of reused.
    """
    return min(config.cache_duration, -(-config.public_per_round // sliding_stride(config)) - 1)


@functools.lru_cache(maxsize=8)
def _public_permutation(seed: int, public_size: int) -> IndexArray:
    order: IndexArray = torch.randperm(
        public_size, generator=round_generator(seed, 0, _WINDOW_STREAM)
    ).numpy()
    order.setflags(write=False)
    return order


class RoundPhase(StrEnum):
    """Where the aggregator is within a round."""

    IDLE = "idle"
    COLLECTING = "collecting"


class UploadOutcome(StrEnum):
    """What happened to an upload; the values are the metric label values."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"  # for a round that is already closed
    REJECTED = "rejected"  # for a future round, an unsampled client or the wrong indices


@dataclass(frozen=True, slots=True)
class RoundResult:
    """A closed round: what the server distils on and what the round cost in labels."""

    round: int
    clients: tuple[int, ...]  # sampled
    contributors: tuple[int, ...]  # whose uploads were aggregated
    indices: IndexArray  # (n,) distillation set: requested then reused
    targets: LabelArray  # (n, C) global soft labels
    requested: int
    reused: int
    cache_version: int


class AggregatorCore:
    """Aggregator logic for DS-FL, SCARLET, CFD, COMET and Selective-FD.

    Args:
        config: the federation configuration.
        num_classes: C.
        label_roundtrip: maps aggregated labels to exactly what clients will decode; by
            default the downlink codec's round trip. The cache stores that, so both sides
            hold bit-identical values.
    """

    def __init__(
        self,
        config: FederationConfig,
        num_classes: int,
        label_roundtrip: Callable[[LabelArray], LabelArray] | None = None,
    ) -> None:
        self.config = config
        self.num_classes = num_classes
        self.cache = ServerCache(config.public_size, num_classes) if config.uses_cache else None
        partial = config.sample_ratio < 1
        # sparse: the dense (K, |P|) table of ClientMirrors grew with K (800 MB at 10,000 x
        # 10,000); this holds only the entries clients received, with the same answers
        self.mirrors = (
            SparseClientMirrors(config.clients, config.public_size)
            if self.cache is not None and partial
            else None
        )
        spec = config.downlink_spec
        self._roundtrip = label_roundtrip or (lambda labels: roundtrip(labels, spec))
        self.round = 0
        self.phase = RoundPhase.IDLE
        self.clients: tuple[int, ...] = ()
        self.plan: RequestPlan | None = None
        self.uploads: dict[int, SoftLabelUpload] = {}
        self.downlink_targets: DistillTargets | None = None
        # COMET: the plain means the server distils on (the downlink carries centroids)
        self.server_targets: LabelArray | None = None
        self.last_commit: CacheCommit | None = None
        self.downlink_digest = ""

    @property
    def cache_version(self) -> int:
        """Version of the global cache (0 without a cache)."""
        return 0 if self.cache is None else self.cache.version

    def open_round(
        self, server_view: Callable[[IndexArray], LabelArray] | None = None
    ) -> list[TrainTask]:
        """Sample clients and public indices, plan the cache, build each client's task.

        Args:
            server_view: with the adaptive cache policy, maps public indices (n,) to the
                server model's current predictions (n, C); the drift of each cached label
                from them decides early refreshes and longer reuse.

        Raises:
            RoundStateConflict: when a round is already being collected.
        """
        if self.phase is not RoundPhase.IDLE:
            raise RoundStateConflict(f"open: round={self.round} is already open")
        t, cfg = self.round, self.config
        self.clients = sampled_clients(cfg, t)
        drawn = drawn_public_indices(cfg, t)
        if self.cache is not None:
            reuse = self._reuse(drawn, t, server_view)
            self.plan = self.cache.plan_requests(drawn, t, cfg.cache_duration, reuse=reuse)
        else:
            self.plan = RequestPlan(np.sort(drawn), np.empty(0, dtype=np.int64))
        self.uploads = {}
        self.phase = RoundPhase.COLLECTING
        return [self._task_for(k) for k in self.clients]

    def _reuse(
        self, drawn: IndexArray, t: int, server_view: Callable[[IndexArray], LabelArray] | None
    ) -> BoolArray | None:
        # None: the paper's rule (is_fresh with D) inside plan_requests
        cfg, cache = self.config, self.cache
        if cache is None or cfg.cache_policy == "fixed":
            return None
        written = cache.written[drawn]
        if cfg.cache_policy == "sliding":
            return window_reuse(written, t, sliding_max_age(cfg))
        return adaptive_reuse(
            written,
            t,
            cfg.cache_duration,
            cfg.effective_max_cache_duration,
            self._drift(drawn, written, server_view),
            cfg.drift_threshold,
        )

    def _drift(
        self,
        drawn: IndexArray,
        written: IndexArray,
        server_view: Callable[[IndexArray], LabelArray] | None,
    ) -> LabelArray:
        """Total variation between each drawn cached label and the server's sharpened view.

        1 (the most) for an empty entry, and for every entry without a server view.
        """
        cfg, cache = self.config, self.cache
        assert cache is not None
        drift = np.ones(drawn.size, dtype=np.float32)
        present = written != NEVER
        if server_view is not None and bool(present.any()):
            view = sharpen(
                torch.from_numpy(server_view(drawn[present])),
                method=cfg.sharpening,
                temperature=cfg.temperature,
                beta=cfg.beta,
            )
            cached = torch.from_numpy(cache.labels[drawn[present]])
            drift[present] = (0.5 * (cached - view).abs().sum(dim=1)).numpy()
        return drift

    def _max_age(self) -> int | None:
        """The commit's reuse bound: None for the paper's rule (expire, do not refresh)."""
        cfg = self.config
        if cfg.cache_policy == "adaptive":
            return cfg.effective_max_cache_duration
        if cfg.cache_policy == "sliding":
            return sliding_max_age(cfg)
        return None

    def _task_for(self, client_id: int) -> TrainTask:
        assert self.plan is not None
        catch_up = None
        commit = self.last_commit
        if self.mirrors is not None and commit is not None and self.cache is not None:
            diff = self.mirrors.diff(client_id, commit)
            if not diff.is_empty:
                catch_up = CatchUp(
                    diff.update_indices, diff.update_labels, diff.update_written, diff.clear_indices
                )
            self.mirrors.record_delivery(client_id, commit, self.cache)
        return TrainTask(
            run_id=self.config.run_id,
            round=self.round,
            client_id=client_id,
            request_indices=self.plan.requested,
            targets=self.downlink_targets,
            catch_up=catch_up,
            cache_version=self.cache_version,
            targets_digest=self.downlink_digest,
        )

    def classify(self, upload: SoftLabelUpload) -> UploadOutcome:
        """What :meth:`accept` would do with ``upload``, without changing anything.

        The service records an upload durably between ``classify`` and ``accept``.
        """
        if upload.run_id != self.config.run_id or upload.round > self.round:
            return UploadOutcome.REJECTED
        if upload.round < self.round or self.phase is not RoundPhase.COLLECTING:
            return UploadOutcome.LATE
        if upload.client_id in self.uploads:
            return UploadOutcome.DUPLICATE
        assert self.plan is not None
        if upload.client_id not in self.clients or not self._fits_request(upload.indices):
            return UploadOutcome.REJECTED
        if upload.soft_labels.shape != (upload.indices.size, self.num_classes):
            return UploadOutcome.REJECTED
        return UploadOutcome.ACCEPTED

    def _fits_request(self, indices: IndexArray) -> bool:
        """The request exactly; for Selective-FD any sorted, unique subset of it (or none).

        Selective-FD clients leave out the public samples their selector calls outliers.
        """
        assert self.plan is not None  # classify runs on an open round only
        requested = self.plan.requested
        if self.config.algorithm != "selective_fd":
            return bool(np.array_equal(indices, requested))
        if indices.ndim != 1 or not bool(np.all(indices[1:] > indices[:-1])):
            return False
        return bool(np.isin(indices, requested, assume_unique=True).all())

    def accept(self, upload: SoftLabelUpload) -> UploadOutcome:
        """Record one decoded upload; idempotent per (run, round, client)."""
        outcome = self.classify(upload)
        if outcome is UploadOutcome.ACCEPTED:
            self.uploads[upload.client_id] = upload
        return outcome

    def missing(self) -> list[int]:
        """Sampled clients whose upload has not arrived yet."""
        return [k for k in self.clients if k not in self.uploads]

    def close_round(self) -> RoundResult:
        """Aggregate the accepted uploads, sharpen, commit to the cache, advance the round.

        Raises:
            RoundStateConflict: when no round is open or no upload was accepted.
        """
        if self.phase is not RoundPhase.COLLECTING or self.plan is None:
            raise RoundStateConflict(f"close: round={self.round} is not open")
        if not self.uploads and self.plan.requested.size:
            raise RoundStateConflict(f"close: round={self.round} has no accepted upload")
        t, cfg, plan = self.round, self.config, self.plan
        received, fresh = self._aggregate(plan)
        if cfg.algorithm == "comet":
            # the server distils on the plain mean; the clients get K_c centroids per index
            self.server_targets = fresh
            self.downlink_targets = DistillTargets(
                t, plan.requested, None, self._centroids(plan), cfg.comet_clusters
            )
            indices, targets = plan.requested, fresh
        elif self.cache is not None:
            commit = self.cache.commit(
                plan, fresh, t, cfg.cache_duration, max_age=self._max_age(), keep=self._keep(plan)
            )
            self.last_commit = commit
            self.downlink_targets = DistillTargets(
                t, commit.indices, commit.signals, commit.fresh_labels
            )
            indices, targets = commit.indices, commit.targets
            self.downlink_digest = targets_digest(targets)
        else:
            indices, targets = self._downlink_rows(received, fresh)
            self.downlink_targets = DistillTargets(t, indices, None, targets)
        result = RoundResult(
            round=t,
            clients=self.clients,
            contributors=tuple(sorted(self.uploads)),
            indices=indices,
            targets=targets,
            requested=plan.requested.size,
            reused=plan.reused.size,
            cache_version=self.cache_version,
        )
        self.round, self.phase, self.uploads = t + 1, RoundPhase.IDLE, {}
        return result

    def _keep(self, plan: RequestPlan) -> BoolArray | None:
        """``cache_ratio`` < 1: which requested entries may be cached this round.

        As the authors' code: of the requested entries that are absent, a uniform draw of
        ``int(ratio * count)`` is cached (seeded per round, so a restarted aggregator
        draws the same); the others are sent and used this round only.
        """
        ratio = self.config.cache_ratio
        if ratio >= 1 or self.cache is None:
            return None
        absent = np.flatnonzero(self.cache.written[plan.requested] == NEVER)
        chosen = torch.randperm(
            absent.size, generator=round_generator(self.config.seed, self.round, _RATIO_STREAM)
        )[: int(ratio * absent.size)]
        keep = np.zeros(plan.requested.size, dtype=bool)
        keep[absent[chosen.numpy()]] = True
        return keep

    def server_distill_set(self) -> tuple[IndexArray, LabelArray]:
        """The last closed round's (indices, targets) the server model distils on.

        Raises:
            RoundStateConflict: before any round closed.
        """
        if self.last_commit is not None:
            return self.last_commit.indices, self.last_commit.targets
        previous = self.downlink_targets
        if previous is None:
            raise RoundStateConflict("distill: no round has closed yet")
        if self.server_targets is not None:
            return previous.indices, self.server_targets
        return previous.indices, previous.fresh_labels

    def replace_downlink_labels(self, labels: LabelArray) -> None:
        """CFD: send the server model's predictions (n, C) instead of the aggregate.

        Only for algorithms without a cache; the rows follow the last round's indices.

        Raises:
            RoundStateConflict: with a cache, or before any round closed.
        """
        previous = self.downlink_targets
        if self.cache is not None or previous is None:
            raise RoundStateConflict(
                "replace: downlink labels can only be replaced without a cache"
            )
        if labels.shape != previous.fresh_labels.shape:
            raise RoundStateConflict(
                f"replace: expected labels of shape {tuple(previous.fresh_labels.shape)}"
            )
        self.downlink_targets = DistillTargets(
            previous.round, previous.indices, None, self._roundtrip(labels)
        )

    def _downlink_rows(
        self, received: IndexArray, fresh: LabelArray
    ) -> tuple[IndexArray, LabelArray]:
        """The rows sent down (and distilled on) without a cache.

        Every aggregated row, or for Selective-FD those whose aggregate passes the
        server-side selector.
        """
        if self.config.algorithm != "selective_fd":
            return received, fresh
        keep = confident_rows(fresh, self.config.sfd_l1_threshold)
        kept_indices: IndexArray = received[keep]
        kept_labels: LabelArray = fresh[keep]
        return kept_indices, kept_labels

    def _aggregate(self, plan: RequestPlan) -> tuple[IndexArray, LabelArray]:
        """The sharpened per-sample means and their indices, one row per index sent.

        That is every requested index (ascending) for all algorithms but Selective-FD,
        whose rows are the union of its clients' subsets: each row averages the clients
        that sent it, and an index nobody sent has no row.
        """
        if not any(u.indices.size for u in self.uploads.values()):
            return np.empty(0, dtype=np.int64), np.empty((0, self.num_classes), np.float32)
        # sort by client id: float sums must not depend on arrival order
        ordered = [self.uploads[k] for k in sorted(self.uploads)]
        labels = torch.from_numpy(np.concatenate([u.soft_labels for u in ordered]))
        index = torch.from_numpy(np.concatenate([u.indices for u in ordered]))
        means, received = mean_by_index(labels, index, self.config.public_size)
        sharpened = sharpen(
            means,
            method=self.config.sharpening,
            temperature=self.config.temperature,
            beta=self.config.beta,
        ).numpy()
        if self.config.algorithm == "comet":
            return received.numpy(), sharpened  # the server's own targets: they never travel
        return received.numpy(), self._roundtrip(sharpened)

    def _centroids(self, plan: RequestPlan) -> LabelArray:
        """COMET: (q * K_c, C) k-means centroids of each requested sample's uploads.

        Every accepted upload covers exactly ``plan.requested`` (no cache), so the uploads
        stack into (q, K, C), in client order; the rows are what clients will decode.
        """
        cfg = self.config
        ordered = [self.uploads[k].soft_labels for k in sorted(self.uploads)]
        points = np.stack(ordered, axis=1)
        generator = np.random.default_rng((cfg.seed, self.round, _CLUSTER_STREAM))
        centroids = kmeans_centroids(points, cfg.comet_clusters, generator)
        return self._roundtrip(centroids.reshape(-1, self.num_classes))
