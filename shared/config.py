"""Typed configuration: one object, read from TOML, ``SCARLET_*`` variables and flags.

Precedence, lowest first: field defaults < TOML file (``--config``) < environment
(``SCARLET_<FIELD>``, e.g. ``SCARLET_CACHE_DURATION=25``; nested sections as
``SCARLET_<SECTION>__<FIELD>``) < command-line flags (``--cache-duration 25``).
Unknown keys are rejected everywhere, with the list of valid ones.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.data.catalog import DATASET_SPLITS, DATASETS
from shared.errors import ConfigError
from shared.protocol.softlabels import CodecSpec

__all__ = [
    "FederationConfig",
    "ServiceSettings",
    "add_model_flags",
    "dump_toml",
    "flag_overrides",
    "load_config",
    "redacted",
]

ENV_PREFIX = "SCARLET_"
M = TypeVar("M", bound=BaseModel)


class FederationConfig(BaseModel):
    """Everything that defines a federation run: the paper's hyper-parameters and data.

    The same object drives ``scarlet simulate`` and the real services; two runs with
    equal configs (and seed) produce the same soft labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field("run", description="name of this federation (queue and key prefix)")
    algorithm: Literal["dsfl", "scarlet", "cfd"] = Field(
        "scarlet",
        description="dsfl: ERA, no cache; scarlet: cache + Enhanced ERA; "
        "cfd: hard-label votes up, server-model soft labels down",
    )
    dataset: str = Field(
        "fashion-mnist", description="fashion-mnist, mnist-5k, digits, cifar10, cifar100"
    )
    data_root: str | None = Field(None, description="folder with torchvision data sets")
    model: str = Field("cnn", description="client model: cnn, resnet20, mlp")
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
    cache_policy: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="fixed: reuse for D rounds (the paper); adaptive: refresh drifted "
        "entries early, keep stable ones up to max_cache_duration",
    )
    drift_threshold: float = Field(
        0.2, gt=0, le=1, description="adaptive cache: total-variation drift that forces a refresh"
    )
    max_cache_duration: int = Field(
        0, ge=0, description="adaptive cache: longest reuse of a stable entry (0: 2·D)"
    )
    uplink_codec: str = Field(
        "q8+zstd", description="soft-label codec of uploads: f32, f16, q2..q8, +zstd"
    )
    downlink_codec: str = Field(
        "q8+zstd", description="soft-label codec of global labels sent to clients"
    )
    client_eval_every: int = Field(
        1, ge=0, description="evaluate clients every N rounds (0: never)"
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
        wanted = self.public_size + self.clients * self.samples_per_client
        if wanted > train:
            raise ValueError(
                f"public_size ({self.public_size}) + clients x samples_per_client "
                f"({self.clients} x {self.samples_per_client}) = {wanted} exceeds the "
                f"{train} training images of {self.dataset}"
            )
        if self.test_per_client > test:
            raise ValueError(
                f"test_per_client ({self.test_per_client}) exceeds the {test} test images "
                f"of {self.dataset}"
            )
        return self

    @model_validator(mode="after")
    def _check_cache(self) -> FederationConfig:
        if self.algorithm != "scarlet":
            # DS-FL and CFD keep no cache: a cache setting would be silently ignored
            if self.cache_policy != "fixed" or self.max_cache_duration:
                raise ValueError(
                    f"cache_policy = {self.cache_policy!r} and max_cache_duration = "
                    f"{self.max_cache_duration} need a cache; algorithm {self.algorithm!r} "
                    "has none (use algorithm = 'scarlet', or the defaults)"
                )
            return self
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
    def uses_cache(self) -> bool:
        """SCARLET keeps the synchronized cache; DS-FL does not."""
        return self.algorithm == "scarlet"

    @property
    def sharpening(self) -> str:
        """The aggregation sharpening the algorithm uses."""
        return {"scarlet": "enhanced_era", "dsfl": "era", "cfd": "none"}[self.algorithm]

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
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest message body accepted or sent"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    linger_s: float = Field(
        0.0,
        description="aggregator: after the last round keep serving /metrics this long, or "
        "until SIGTERM when negative (a Kubernetes Deployment then never restarts it)",
    )


def load_config(
    model: type[M],
    *,
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    section: str | None = None,
) -> M:
    """Build ``model`` from defaults < TOML ``path`` < ``env`` < ``overrides``.

    Args:
        model: the pydantic settings class.
        path: optional TOML file; with ``section`` only that table is read.
        env: environment (default ``os.environ``); only ``SCARLET_*`` keys are used.
        overrides: values from command-line flags (already typed or strings).
        section: TOML table holding this model's keys (None: the top level).

    Raises:
        ConfigError: unreadable file, unknown key or invalid value, with the key named.
    """
    data: dict[str, object] = {}
    if path is not None:
        data.update(_read_toml(Path(path), section))
    data.update(_from_env(model, os.environ if env is None else env))
    data.update(overrides or {})
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {unknown}; valid keys: {sorted(model.model_fields)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _read_toml(path: Path, section: str | None) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if section is None:
        return {k: v for k, v in doc.items() if not isinstance(v, dict)}
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return dict(table)


def _from_env(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, object]:
    # Strings are handed to pydantic, which parses numbers and booleans itself.
    found: dict[str, object] = {}
    for name in model.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            found[name] = env[key]
    return found


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one ``--kebab-case`` flag per field of ``model``, defaulting to "not given"."""
    group = parser.add_argument_group(f"{model.__name__} (also TOML keys / SCARLET_* vars)")
    for name, field in model.model_fields.items():
        kind = _flag_type(field.annotation)
        default = field.default
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            # argparse %-formats help text: a literal % (the %2F of a broker URL) must be %%
            help=f"{field.description or ''} (default: {default})".replace("%", "%%"),
        )


def flag_overrides(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, object]:
    """The fields of ``model`` that were given on the command line."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}


def _flag_type(annotation: Any) -> Any:
    # Optional[X] and Literal[...] flags arrive as strings; pydantic validates them later.
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Literal):
        return str
    if annotation is bool:
        return _parse_bool
    return annotation if annotation in (int, float, str) else str


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def redacted(
    values: Mapping[str, object], secrets: Sequence[str] = ("password", "url")
) -> dict[str, object]:
    """A copy of ``values`` with credentials in URLs and password fields masked."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, str) and any(s in key for s in secrets) and "@" in value:
            scheme, _, rest = value.partition("://")
            out[key] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        elif "password" in key and value:
            out[key] = "***"
        else:
            out[key] = value
    return out


def dump_toml(config: FederationConfig, settings: ServiceSettings) -> str:
    """A TOML file that :func:`load_config` reads back into the same two objects.

    Federation keys go at the top level, service keys under ``[service]``; None values are
    left out (they are the defaults).
    """

    def lines(values: Mapping[str, object]) -> list[str]:
        out = []
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            out.append(f"{key} = {text}")
        return out

    body = lines(config.model_dump()) + ["", "[service]"] + lines(settings.model_dump())
    return "\n".join(body) + "\n"
