"""Pool mode routes every client's task to the pool queue with one binding."""

from __future__ import annotations

from shared.config import FederationConfig
from shared.protocol import routes
from shared.transport.memory import InMemoryTransport
from shared.transport.topology import declare_topology

CONFIG = FederationConfig(
    run_id="pool-routing",
    dataset="fashion-mnist",
    clients=10_000,
    samples_per_client=5,
    public_size=1000,
    public_per_round=10,
    test_per_client=0,
)


def test_pool_mode_routes_every_client_by_one_key_and_pinned_mode_by_the_clients_own():
    assert {routes.task_routing_key("pool", k) for k in (0, 17, 9_999)} == {routes.POOL_KEY}
    assert routes.task_routing_key("pinned", 17) == routes.client_routing_key(17)


def test_the_pool_queue_has_one_binding_however_many_clients_and_receives_every_task():
    # Given the pool topology of a 10,000-client federation
    broker = InMemoryTransport(user="aggregator")
    declare_topology(broker, CONFIG, "pool")
    state = broker._broker.queues[routes.pool_tasks_queue(CONFIG.run_id)]
    # Then the pool queue holds one binding, not one per client
    assert state.bindings == {(routes.rounds_exchange(CONFIG.run_id), routes.POOL_KEY)}
    # and a task for the last client reaches it
    key = routes.task_routing_key("pool", 9_999)
    broker.publish(routes.rounds_exchange(CONFIG.run_id), key, b"task")
    delivery = broker.get(routes.pool_tasks_queue(CONFIG.run_id), timeout_s=1)
    assert delivery is not None and delivery.body == b"task"
