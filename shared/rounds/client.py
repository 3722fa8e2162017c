"""The client's half of a round: restore targets, distil, train, predict, evaluate.

A :class:`ClientRuntime` turns a :class:`TrainTask` into a :class:`SoftLabelUpload`. It
owns the client's model and cache replica; where the task came from and where the upload
goes is the caller's business. The task's and the upload's arrays are numpy; the model
side converts them with ``torch.from_numpy`` and ``Tensor.numpy()``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from shared.arrays import AnyArray, BoolArray, IndexArray, LabelArray
from shared.cache_policy import CatchUpDiff, ClientCache, targets_digest
from shared.config import FederationConfig
from shared.data import ImageDataset, pixel_normalization
from shared.distill.augment import Augmentation
from shared.distill.clusters import nearest_centroids
from shared.distill.sampling import round_generator
from shared.distill.selective import fit_inlier_mask
from shared.distill.training import distill, evaluate, predict, train_supervised
from shared.errors import CacheDesync
from shared.models import build_model
from shared.models.arrays import load_state_arrays, state_arrays
from shared.protocol.messages import DistillTargets, SoftLabelUpload, TrainTask

__all__ = ["ClientRuntime", "PhaseTimes"]

_TRAIN_STREAM = 1000
_SELECTOR_STREAM = 2000  # Selective-FD's noise and private split, once per client
# augmentation draws, one stream per client and use (K <= 10,000 keeps them apart)
_AUGMENT_TRAIN_STREAM = 20_000
_AUGMENT_DISTILL_STREAM = 40_000


@dataclass
class PhaseTimes:
    """Seconds spent in each phase of the last task (measured by the caller's clock)."""

    distill: float = 0.0
    train: float = 0.0
    predict: float = 0.0


class ClientRuntime:
    """One client: private data, model, cache replica.

    Args:
        client_id: k.
        config: the federation configuration.
        private: the client's private shard.
        test: the client's own test shard (None: not evaluated).
        public: (|P|, ch, H, W) the public images, indexed by public index.
        num_classes: C.
    """

    def __init__(
        self,
        client_id: int,
        config: FederationConfig,
        private: ImageDataset,
        test: ImageDataset | None,
        public: Tensor,
        num_classes: int,
    ) -> None:
        self.client_id = client_id
        self.config = config
        self.private = private
        self.test = test
        self.public = public
        self.num_classes = num_classes
        self.model: nn.Module = build_model(
            config.model, private.input_shape, num_classes, seed=config.seed * 100_003 + client_id
        )
        self.cache = ClientCache(config.public_size, num_classes) if config.uses_cache else None
        # Selective-FD: (|P|,) inliers of the client's density-ratio selector, fitted at the
        # first task and kept in the state from then on (never refitted); None: not yet
        self.inliers: BoolArray | None = None
        self.completed_round = -1  # last round whose upload was produced
        self.last_upload: bytes = b""  # its encoded body, republished if the task comes again
        self.last_times = PhaseTimes()

    def handle(self, task: TrainTask) -> SoftLabelUpload:
        """Run one round for this client: :meth:`restore_targets`, then :meth:`learn`.

        Raises:
            CacheDesync: when the task's signals do not match the replica (the caller
                resynchronizes the replica and retries).
        """
        return self.learn(task, self.restore_targets(task))

    def learn(self, task: TrainTask, targets: LabelArray | None) -> SoftLabelUpload:
        """Distil on ``targets`` (round t-1's labels), train, predict on the requested samples.

        This is the long part of a round and touches only the model: services run it on a
        thread of its own while the network thread keeps the broker connection alive.
        """
        cfg, times = self.config, PhaseTimes()
        if task.targets is not None and targets is not None:
            start = time.perf_counter()
            images = self.public[torch.from_numpy(task.targets.indices)]
            weight = 1.0
            if cfg.algorithm == "comet":
                targets = self._nearest_centroids(images, targets, task.targets.clusters)
                weight = cfg.comet_weight
            distill(
                self.model,
                images,
                torch.from_numpy(targets),
                epochs=cfg.distill_epochs,
                batch_size=cfg.distill_batch_size,
                lr=cfg.distill_lr,
                augment=self._augmentation(task.round, _AUGMENT_DISTILL_STREAM),
                weight=weight,
            )
            times.distill = time.perf_counter() - start
        start = time.perf_counter()
        loss = train_supervised(
            self.model,
            self.private.images,
            self.private.labels,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            generator=round_generator(cfg.seed, task.round, _TRAIN_STREAM + self.client_id),
            augment=self._augmentation(task.round, _AUGMENT_TRAIN_STREAM),
        )
        times.train = time.perf_counter() - start
        start = time.perf_counter()
        requested = self._uploaded_indices(task.request_indices)
        probs = predict(self.model, self.public[torch.from_numpy(requested)])
        if cfg.algorithm == "cfd":
            # CFD uploads hard labels: the one-hot argmax, exactly representable by any codec
            probs = torch.nn.functional.one_hot(probs.argmax(dim=1), self.num_classes).float()
        times.predict = time.perf_counter() - start
        self.last_times = times
        return SoftLabelUpload(
            run_id=task.run_id,
            round=task.round,
            client_id=self.client_id,
            indices=requested,
            soft_labels=probs.numpy(),
            train_loss=loss,
            client_accuracy=self._evaluate(task.round),
        )

    def _uploaded_indices(self, requested: IndexArray) -> IndexArray:
        """The requested indices this client predicts: all, or Selective-FD's inliers."""
        if self.config.algorithm != "selective_fd":
            return requested
        kept: IndexArray = requested[self.selector_inliers()[requested]]
        return kept  # a subset of a sorted array stays sorted and unique

    def selector_inliers(self) -> BoolArray:
        """Selective-FD's (|P|,) inlier mask, fitted on the first call and kept.

        Seeded by (seed, client id) only, so every process that serves this client
        (pinned, pool, after a restart) fits the same mask.
        """
        if self.inliers is None:
            cfg = self.config
            self.inliers = fit_inlier_mask(
                self._selector_rows(self.private.images, cfg.dataset),
                self._selector_rows(self.public, cfg.public_source),
                kernel_width=cfg.sfd_kernel_width,
                lambda_exponent=cfg.sfd_lambda_exponent,
                quantile=cfg.sfd_threshold,
                rng=np.random.default_rng([cfg.seed, self.client_id, _SELECTOR_STREAM]),
            )
        return self.inliers

    def _selector_rows(self, images: Tensor, dataset: str) -> AnyArray:
        """(N, ch·H·W) float32 rows on the authors' [-1, 1] pixel scale.

        Our images are normalized with the data set's mean/std; the selector's noise is
        uniform in [-1, 1], the range of the authors' Normalize(0.5, 0.5) images, so the
        pixels are mapped back to [0, 1] and then to [-1, 1], with the statistics of the
        data set they come from (the public set may be another one).
        """
        mean, std = pixel_normalization(dataset)
        shape = (1, len(mean), 1, 1)
        m = torch.tensor(mean, dtype=torch.float32).view(shape)
        s = torch.tensor(std, dtype=torch.float32).view(shape)
        rows: AnyArray = ((images * s + m) * 2.0 - 1.0).flatten(1).numpy()
        return rows

    def _nearest_centroids(
        self, images: Tensor, centroids: LabelArray, clusters: int
    ) -> LabelArray:
        """COMET: per sample, the centroid nearest to what this model predicts now."""
        own = predict(self.model, images).numpy()
        return nearest_centroids(own, centroids.reshape(len(own), clusters, self.num_classes))

    def restore_targets(self, task: TrainTask) -> LabelArray | None:
        """Apply the task's catch-up and signals to the replica; return (n, C) targets.

        Returns None in round 0 (nothing to distil on yet). Under COMET these are the
        (n * K_c, C) centroid rows; :meth:`learn` picks one per sample.

        Raises:
            CacheDesync: a CACHED entry missing from the replica, or restored targets whose
                digest differs from the aggregator's. The replica must then be resynced.
        """
        targets: DistillTargets | None = task.targets
        if targets is None:
            return None
        if targets.signals is None:
            return targets.fresh_labels
        if self.cache is None:
            raise CacheDesync("restore: cache signals received by a client without a cache")
        if task.catch_up is not None:
            c = task.catch_up
            self.cache.apply_catch_up(
                CatchUpDiff(c.update_indices, c.update_labels, c.update_written, c.clear_indices)
            )
        restored = self.cache.restore(
            targets.round, targets.indices, targets.signals, targets.fresh_labels
        )
        if task.targets_digest and targets_digest(restored) != task.targets_digest:
            raise CacheDesync(
                f"restore: round={task.round} client={self.client_id} restored targets do not "
                "match the aggregator's digest"
            )
        return restored

    def _augmentation(self, round_no: int, stream: int) -> Augmentation | None:
        if not self.config.augment:
            return None
        generator = round_generator(self.config.seed, round_no, stream + self.client_id)
        return Augmentation.for_images(self.private.input_shape, generator)

    def _evaluate(self, round_no: int) -> float:
        every = self.config.client_eval_every
        if self.test is None or len(self.test) == 0 or every == 0 or (round_no + 1) % every:
            return math.nan
        return evaluate(self.model, self.test.images, self.test.labels)

    def state_dict(self) -> dict[str, AnyArray]:
        """Everything that must survive between rounds: model weights and cache replica.

        numpy arrays (copies), ready for :func:`~shared.protocol.tensors.encode_tensor_map`.
        """
        state = state_arrays(self.model, "model.")
        if self.cache is not None:
            state["cache.labels"] = self.cache.labels.copy()
            state["cache.written"] = self.cache.written.copy()
        if self.config.algorithm == "selective_fd":
            # uint8 (the state's tensor maps hold no bool); empty until the first fit
            inliers = np.empty(0, dtype=np.uint8) if self.inliers is None else self.inliers
            state["selector.inliers"] = inliers.astype(np.uint8)
        state["progress.completed_round"] = np.array([self.completed_round], dtype=np.int64)
        state["progress.last_upload"] = np.frombuffer(self.last_upload, dtype=np.uint8).copy()
        return state

    def load_state_dict(self, state: dict[str, AnyArray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        load_state_arrays(self.model, state, "model.")
        if self.cache is not None:
            self.cache.labels = state["cache.labels"].copy()
            self.cache.written = state["cache.written"].copy()
        if self.config.algorithm == "selective_fd":
            inliers = state["selector.inliers"]
            self.inliers = inliers.astype(np.bool_) if inliers.size else None
        self.completed_round = int(state["progress.completed_round"][0])
        self.last_upload = state["progress.last_upload"].tobytes()
