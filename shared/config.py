"""Typed configuration: the federation's and the services' settings as pydantic models.

:class:`FederationConfig` describes a run (core), :class:`ServiceSettings` says how the
processes reach the broker and the store (adapters). Unknown keys are rejected. Reading
them from TOML, ``SCARLET_*`` variables and flags, and writing them back, is
:mod:`shared.config_loading`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.data.catalog import DATASET_SHAPES, DATASET_SPLITS, DATASETS
from shared.protocol.messages import MAX_CLUSTERS
from shared.protocol.softlabels import CodecSpec

__all__ = ["FederationConfig", "ServiceSettings"]

_SFD_MIN_PRIVATE = 4  # = shared.distill.selective.MIN_PRIVATE_SAMPLES (config imports no torch)


class FederationConfig(BaseModel):
    """Everything that defines a federation run: the paper's hyper-parameters and data.

    The same object drives ``scarlet simulate`` and the real services; two runs with
    equal configs (and seed) produce the same soft labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field("run", description="name of this federation (queue and key prefix)")
    algorithm: Literal["dsfl", "scarlet", "cfd", "comet", "selective_fd"] = Field(
        "scarlet",
        description="dsfl: ERA, no cache; scarlet: cache + Enhanced ERA; "
        "cfd: hard-label votes up, server-model soft labels down; "
        "comet: per-sample k-means centroids down, each client distils on its nearest; "
        "selective_fd: clients upload only the public samples their density-ratio "
        "selector keeps, plain mean",
    )
    dataset: str = Field(
        "fashion-mnist", description="fashion-mnist, mnist-5k, digits, cifar10, cifar100"
    )
    public_dataset: str | None = Field(
        None,
        description="data set the public set is drawn from (default: dataset, disjoint "
        "from the private shards); another one must have the same image shape, e.g. "
        "mnist-5k for fashion-mnist",
    )
    data_root: str | None = Field(None, description="folder with torchvision data sets")
    model: str = Field("cnn", description="client model: cnn, resnet20, resnet32, mlp")
    server_model: str | None = Field(None, description="server model (default: same as model)")
    clients: int = Field(10, ge=1, le=10_000, description="number of clients K")
    sample_ratio: float = Field(1.0, gt=0, le=1, description="clients sampled per round")
    rounds: int = Field(15, ge=1, description="federation rounds R")
    samples_per_client: int = Field(1000, ge=1, description="private images per client")
    test_per_client: int = Field(200, ge=0, description="per-client test shard size")
    alpha: float = Field(
        0.3, ge=0, description="Dirichlet α of the private partition (0 means IID)"
    )
    public_size: int = Field(10_000, ge=1, description="public set size |P|")
    public_per_round: int = Field(1000, ge=1, description="public samples drawn per round")
    local_epochs: int = Field(1, ge=0, description="private training epochs per round")
    distill_epochs: int = Field(2, ge=0, description="client distillation epochs per round")
    server_distill_epochs: int = Field(2, ge=0, description="server distillation epochs")
    batch_size: int = Field(100, ge=1, description="private training batch size")
    distill_batch_size: int = Field(100, ge=1, description="distillation batch size")
    lr: float = Field(0.1, gt=0, description="private training learning rate (plain SGD)")
    distill_lr: float = Field(0.1, gt=0, description="distillation learning rate")
    temperature: float = Field(0.1, gt=0, description="DS-FL ERA temperature (T)")
    beta: float = Field(2.0, gt=0, description="Enhanced ERA exponent (β)")
    cache_duration: int = Field(50, ge=0, description="cache duration D in rounds")
    cache_policy: Literal["fixed", "adaptive", "sliding"] = Field(
        "fixed",
        description="fixed: reuse for D rounds (the paper); adaptive: refresh drifted "
        "entries early, keep stable ones up to max_cache_duration; sliding: each round "
        "draws a window that advances by refresh_share of itself, so only its new part "
        "is requested",
    )
    refresh_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="sliding cache: share of each round's public draw that is new",
    )
    cache_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fixed cache: share of a round's newly aggregated labels that enter "
        "the cache (a seeded draw); the rest are sent and used that round only",
    )
    drift_threshold: float = Field(
        0.2, gt=0, le=1, description="adaptive cache: total-variation drift that forces a refresh"
    )
    max_cache_duration: int = Field(
        0, ge=0, description="adaptive cache: longest reuse of a stable entry (0: 2·D)"
    )
    sfd_kernel_width: float = Field(
        5.0, gt=0, description="Selective-FD: Gaussian kernel width of the KuLSIF selector"
    )
    sfd_lambda_exponent: float = Field(
        0.5, description="Selective-FD: KuLSIF lambda = |D_k| ** this exponent"
    )
    sfd_threshold: float = Field(
        0.125,
        ge=0,
        le=1,
        description="Selective-FD: quantile of the held-out private ratios below which a "
        "public sample is an outlier (never uploaded)",
    )
    sfd_l1_threshold: float = Field(
        2.0,
        gt=0,
        description="Selective-FD: keep an aggregated label only if its L1 distance to its "
        "one-hot argmax is below this (2.0 keeps every label)",
    )
    comet_clusters: int = Field(
        2,
        ge=1,
        le=MAX_CLUSTERS,
        description="COMET: k-means centroids K_c per public sample sent to clients",
    )
    comet_weight: float = Field(
        1.0, gt=0, description="COMET: weight of the distillation loss towards the centroid"
    )
    uplink_codec: str = Field(
        "q8+ans", description="soft-label codec of uploads: f32, f16, q2..q8, +zstd or +ans"
    )
    downlink_codec: str = Field(
        "q8+ans", description="soft-label codec of global labels sent to clients"
    )
    client_eval_every: int = Field(
        1, ge=0, description="evaluate clients every N rounds (0: never)"
    )
    augment: bool = Field(
        False,
        description="augment private and public training images: random shifts of up to "
        "H/8 pixels (a crop of the zero-padded image), plus left-right flips for colour "
        "images; drawn per client, round and sample, so every process agrees",
    )
    seed: int = Field(42, ge=0, description="seed of every random draw")
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="torch threads per process (0: torch's default); runs with equal values "
        "give bit-identical soft labels",
    )

    @field_validator("uplink_codec", "downlink_codec")
    @classmethod
    def _check_codec(cls, value: str) -> str:
        CodecSpec.parse(value)  # raises ValueError with the grammar
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> FederationConfig:
        if self.public_per_round > self.public_size:
            raise ValueError(
                f"public_per_round ({self.public_per_round}) exceeds public_size "
                f"({self.public_size})"
            )
        if self.sample_ratio * self.clients < 0.5:
            # sampling rounds ratio·K to the nearest count: below 0.5 that is no client
            raise ValueError(
                f"sample_ratio ({self.sample_ratio}) of {self.clients} clients samples no "
                f"client; use at least {0.5 / self.clients:.4g}"
            )
        splits = DATASET_SPLITS.get(self.dataset)
        if splits is None:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        train, test = splits
        private = self.clients * self.samples_per_client
        if self.cross_dataset:
            public_train = self._check_public_dataset()
            if self.public_size > public_train:
                raise ValueError(
                    f"public_size ({self.public_size}) exceeds the {public_train} training "
                    f"images of public_dataset {self.public_dataset}"
                )
            if private > train:
                raise ValueError(
                    f"clients x samples_per_client ({self.clients} x "
                    f"{self.samples_per_client}) = {private} exceeds the {train} training "
                    f"images of {self.dataset}"
                )
        elif self.public_size + private > train:
            raise ValueError(
                f"public_size ({self.public_size}) + clients x samples_per_client "
                f"({self.clients} x {self.samples_per_client}) = {self.public_size + private} "
                f"exceeds the {train} training images of {self.dataset}"
            )
        if self.algorithm == "selective_fd" and self.samples_per_client < _SFD_MIN_PRIVATE:
            # the selector fits on 90 % of half the shard and thresholds on the rest
            raise ValueError(
                f"selective_fd needs samples_per_client >= {_SFD_MIN_PRIVATE} (one image "
                f"to fit its selector on and one to threshold on), got "
                f"{self.samples_per_client}"
            )
        if self.test_per_client > test:
            raise ValueError(
                f"test_per_client ({self.test_per_client}) exceeds the {test} test images "
                f"of {self.dataset}"
            )
        return self

    def _check_public_dataset(self) -> int:
        """The public data set's train size, once it is known and fits the private task."""
        name = self.public_dataset
        splits = DATASET_SPLITS.get(name or "")
        if name is None or splits is None:
            raise ValueError(
                f"unknown public_dataset {name!r}; choose one of {', '.join(DATASETS)}"
            )
        if DATASET_SHAPES[name] != DATASET_SHAPES[self.dataset]:
            raise ValueError(
                f"public_dataset {name} has images of shape {DATASET_SHAPES[name]}, the "
                f"private {self.dataset} {DATASET_SHAPES[self.dataset]}: the models take "
                "one shape (choose a public set of the same size and channels)"
            )
        return splits[0]

    @model_validator(mode="after")
    def _check_cache(self) -> FederationConfig:
        if self.algorithm != "scarlet":
            # only SCARLET keeps a cache: a cache setting would be silently ignored
            if self.cache_policy != "fixed" or self.max_cache_duration or self.cache_ratio < 1:
                raise ValueError(
                    f"cache_policy = {self.cache_policy!r}, max_cache_duration = "
                    f"{self.max_cache_duration} and cache_ratio = {self.cache_ratio} need a "
                    f"cache; algorithm {self.algorithm!r} "
                    "has none (use algorithm = 'scarlet', or the defaults)"
                )
            return self
        if self.cache_ratio < 1 and self.cache_policy != "fixed":
            raise ValueError(
                f"cache_ratio ({self.cache_ratio}) applies to cache_policy = 'fixed' only; "
                f"the {self.cache_policy} policy refreshes entries in place"
            )
        if self.cache_policy == "fixed" and self.max_cache_duration:
            raise ValueError(
                "max_cache_duration applies to cache_policy = 'adaptive' only; the fixed "
                "policy reuses an entry for exactly cache_duration rounds"
            )
        if 0 < self.max_cache_duration < self.cache_duration:
            # the adaptive rule keeps stable entries *longer* than D: a shorter maximum
            # contradicts the D-round reuse and fails the cache's own commit check
            raise ValueError(
                f"max_cache_duration ({self.max_cache_duration}) must be 0 (2 x "
                f"cache_duration) or at least cache_duration ({self.cache_duration})"
            )
        return self

    @property
    def public_source(self) -> str:
        """The data set the public set is drawn from."""
        return self.public_dataset or self.dataset

    @property
    def cross_dataset(self) -> bool:
        """True when the public set comes from another data set than the private task."""
        return self.public_source != self.dataset

    @property
    def uses_cache(self) -> bool:
        """SCARLET keeps the synchronized cache; DS-FL does not."""
        return self.algorithm == "scarlet"

    @property
    def sharpening(self) -> str:
        """The aggregation sharpening the algorithm uses."""
        sharpening = {
            "scarlet": "enhanced_era",
            "dsfl": "era",
            "cfd": "none",
            "comet": "none",
            "selective_fd": "none",
        }
        return sharpening[self.algorithm]

    @property
    def uplink_spec(self) -> CodecSpec:
        """The parsed uplink codec."""
        return CodecSpec.parse(self.uplink_codec)

    @property
    def downlink_spec(self) -> CodecSpec:
        """The parsed downlink codec."""
        return CodecSpec.parse(self.downlink_codec)

    @property
    def effective_max_cache_duration(self) -> int:
        """The adaptive policy's longest reuse (``max_cache_duration``, or 2·D when 0)."""
        return self.max_cache_duration or 2 * self.cache_duration

    @property
    def iid(self) -> bool:
        """True when the private partition is IID (α = 0 by convention)."""
        return self.alpha == 0


class ServiceSettings(BaseModel):
    """How the services reach each other and behave (TOML table ``[service]``).

    The federation itself is described by :class:`FederationConfig`; these settings only
    say where the broker and store are and how patient the processes are.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F", description="RabbitMQ URL (amqp://...)"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL of the federation store"
    )
    state_url: str = Field(
        "memory://", description="pool-mode client state store: memory://, file:///dir, redis://"
    )
    worker_mode: Literal["pinned", "pool"] = Field(
        "pinned", description="pinned: one queue per client; pool: one shared task queue"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0: off)")
    metrics_host: str = Field(
        "127.0.0.1", description="address /metrics listens on (0.0.0.0: every interface)"
    )
    verify_senders: bool = Field(
        True,
        description="accept uploads, tasks, cache-sync requests and replies only from the "
        "broker user (AMQP user_id) of the role that may send them",
    )
    aggregator_user: str = Field(
        "scarlet-aggregator", description="broker user of the aggregator (tasks come from it)"
    )
    cache_user: str = Field(
        "scarlet-cache", description="broker user of the cache service (replies come from it)"
    )
    pool_user: str = Field("scarlet-pool", description="broker user every pool worker shares")
    client_user_prefix: str = Field(
        "scarlet-client-", description="pinned client k's broker user is this prefix + k"
    )
    round_timeout_s: float = Field(
        600.0, gt=0, description="deadline after which a round closes with a minimum quorum"
    )
    min_quorum: float = Field(
        1.0, gt=0, le=1, description="share of sampled clients needed to close at the deadline"
    )
    rpc_timeout_s: float = Field(30.0, gt=0, description="cache-sync RPC timeout")
    store_retry_s: float = Field(
        60.0,
        ge=0,
        description="aggregator and cache service: ride out a Redis outage this long "
        "(capped backoff) before giving up with StoreUnavailable",
    )
    heartbeat_s: int = Field(30, ge=0, description="AMQP heartbeat interval")
    ingest_prefetch: int = Field(
        64,
        ge=1,
        le=10_000,
        description="aggregator and cache service: deliveries the broker sends ahead of "
        "the acks (basic_qos); handled and acked in batches of up to half of it",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest message body accepted or sent"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    linger_s: float = Field(
        0.0,
        description="aggregator: after the last round keep serving /metrics this long, or "
        "until SIGTERM when negative (a Kubernetes Deployment then never restarts it)",
    )
