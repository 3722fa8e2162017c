"""Run the real services on threads (one broker connection each) against RabbitMQ/Redis."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from services.aggregator.coordinator import RoundCoordinator
from services.cache.service import CacheService
from services.worker.clients import PinnedClient, PoolClients
from services.worker.handler import TaskHandler
from services.worker.loop import WorkerLoop
from services.worker.resync import CacheResync
from shared.cache_policy import NEVER
from shared.config import FederationConfig, ServiceSettings
from shared.data import FederatedData
from shared.errors import AccessRefused, ScarletError
from shared.metrics import Metrics
from shared.protocol import routes
from shared.protocol.codec import DecodeLimits
from shared.rounds.setup import build_runtime
from shared.security.roles import Identities, user_from_url
from shared.state import open_federation_store
from shared.state.base import ClientStateStore
from shared.transport import AmqpTransport, Transport
from shared.transport.topology import declare_pool_queue

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS = "redis://127.0.0.1:6379/0"


SMALL_FEDERATION: dict[str, object] = dict(
    dataset="digits",
    clients=3,
    samples_per_client=300,
    public_size=400,
    public_per_round=150,
    rounds=3,
    test_per_client=50,
    local_epochs=2,
    distill_epochs=2,
    server_distill_epochs=2,
    cache_duration=1,  # expiries happen within three rounds
)
"""A federation small enough for a test yet exercising every cache signal."""


def new_run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@dataclass
class Federation:
    """The services of one federation, each on its own thread."""

    config: FederationConfig
    data: FederatedData
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    metrics: Metrics = field(default_factory=Metrics.create)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    aggregator: RoundCoordinator | None = None
    aggregator_done: threading.Event = field(default_factory=threading.Event)
    broker_urls: dict[str, str] = field(default_factory=dict)
    """Role (``aggregator``, ``cache``, ``client-<k>``, ``pool``) -> its broker URL; a role
    not named connects as guest (``scarlet provision`` makes per-role users)."""
    senders: Identities | None = None
    """When set, every service checks who sent what (``verify_senders``)."""

    @property
    def dead_letter_queue(self) -> str:
        return f"scarlet.{self.config.run_id}.dead-letter"

    def transport(self, role: str = "") -> Transport:
        run = self.config.run_id
        return AmqpTransport(
            self.broker_urls.get(role, AMQP),
            dead_letter_exchange=f"scarlet.{run}.dlx",
            dead_letter_queue=self.dead_letter_queue,
            heartbeat_s=30,
        )

    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.config.public_size, self.data.num_classes)

    def _spawn(self, name: str, body: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                body()
            except BaseException as e:  # surfaced by join()
                self.errors.append(e)
                self.stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def start_cache_service(self) -> None:
        def body() -> None:
            transport = self.transport("cache")
            store = open_federation_store(REDIS, self.config.run_id)
            senders = self.senders
            requesters = None
            if senders is not None:
                clients, mode = self.config.clients, self.settings.worker_mode
                requesters = lambda user: senders.requester_ok(user, clients, mode)  # noqa: E731
            service = CacheService(
                transport, store, self.config.run_id, self.limits(), requesters=requesters
            )
            service.declare()
            try:
                service.serve_forever(self.stop)
            finally:
                transport.close()

        self._spawn("cache", body)

    def start_aggregator(self, wrap: Callable[[Transport], Transport] | None = None) -> None:
        ready = threading.Event()

        def body() -> None:
            transport = self.transport("aggregator")
            if wrap is not None:
                transport = wrap(transport)
            store = open_federation_store(REDIS, self.config.run_id)
            service = RoundCoordinator(
                self.config,
                self.settings,
                self.data,
                transport,
                store,
                self.metrics,
                senders=self.senders,
            )
            service.start()
            self.aggregator = service
            ready.set()
            try:
                service.run(stop=self.stop.is_set)
                if service.finished:
                    self.aggregator_done.set()
            finally:
                transport.close()

        self._spawn("aggregator", body)
        ready.wait(30)

    def start_worker(
        self,
        client_id: int | None,
        client_store: ClientStateStore | None = None,
        handler_class: type[TaskHandler] = TaskHandler,
    ) -> None:
        def body() -> None:
            role = "pool" if client_id is None else f"client-{client_id}"
            transport = self.transport(role)
            run = self.config.run_id
            if client_id is None:
                assert client_store is not None
                with contextlib.suppress(AccessRefused):  # provisioned: the aggregator did
                    declare_pool_queue(transport, self.config)
                queue = routes.pool_tasks_queue(run)
                provider: PinnedClient | PoolClients = PoolClients(
                    self.config, self.data, client_store
                )
            else:
                queue = routes.client_tasks_queue(run, client_id)
                provider = PinnedClient(build_runtime(self.config, self.data, client_id))
            user = user_from_url(self.broker_urls.get(role, AMQP))
            worker_id = f"{user}.{uuid.uuid4().hex[:8]}"  # its reply queue is its user's
            rpc = CacheResync(
                transport,
                run,
                -1 if client_id is None else client_id,
                worker_id,
                self.limits(),
                20.0,
                self.senders,
            )
            rpc.declare()
            handler = handler_class(
                provider, transport, self.limits(), rpc, self.metrics, self.senders
            )
            try:
                WorkerLoop(handler, transport, queue).run(self.stop)
            finally:
                with contextlib.suppress(ScarletError):
                    transport.delete_queue(routes.reply_queue(run, worker_id))
                transport.close()

        self._spawn(f"worker-{client_id}", body)

    def wait(self, timeout_s: float) -> None:
        finished = self.aggregator_done.wait(timeout_s)
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        if self.errors:
            raise self.errors[0]
        assert finished, "the federation did not finish in time"

    def global_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense (labels, written) of the global cache as stored in Redis."""
        store = open_federation_store(REDIS, self.config.run_id)
        snap = store.cache_snapshot()
        labels = np.zeros((self.config.public_size, self.data.num_classes), dtype=np.float32)
        written = np.full(self.config.public_size, NEVER, dtype=np.int64)
        if snap.indices.size:
            labels[snap.indices] = snap.labels
            written[snap.indices] = snap.written
        return labels, written

    def cleanup(self) -> None:
        run = self.config.run_id
        open_federation_store(REDIS, run).delete_all()
        transport = self.transport()
        queues = [
            routes.uploads_queue(run),
            routes.pool_tasks_queue(run),
            routes.cache_rpc_queue(run),
            self.dead_letter_queue,
            *(routes.client_tasks_queue(run, k) for k in range(self.config.clients)),
        ]
        for queue in queues:
            with contextlib.suppress(ScarletError):
                transport.delete_queue(queue)
        for exchange in (
            routes.rounds_exchange(run),
            routes.uploads_exchange(run),
            routes.cache_rpc_exchange(run),
            routes.replies_exchange(run),
        ):
            with contextlib.suppress(ScarletError):
                transport.delete_exchange(exchange)  # type: ignore[attr-defined]
        with contextlib.suppress(ScarletError):
            transport.delete_exchange(f"scarlet.{run}.dlx")  # type: ignore[attr-defined]
        transport.close()


@contextlib.contextmanager
def federation(config: FederationConfig, data: FederatedData) -> Iterator[Federation]:
    fed = Federation(config, data)
    try:
        yield fed
    finally:
        fed.stop.set()
        for thread in fed.threads:
            thread.join(30)
        fed.cleanup()
