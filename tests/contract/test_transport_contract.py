"""One contract, two transports: every test runs on memory:// and on the local RabbitMQ.

The in-memory transport is only a faithful stand-in for RabbitMQ if both pass the same
bodies; the unit and simulation tests built on it are trustworthy because of this file.
"""

from __future__ import annotations

import threading
import time

import pytest

from shared.errors import ConfigError, MessageTooLarge, TransportClosed, TransportError
from shared.transport import (
    HEADER_ORIGINAL_QUEUE,
    HEADER_REJECT_REASON,
    Delivery,
    ExchangeSpec,
    InMemoryTransport,
    QueueSpec,
    Transport,
    open_transport,
)
from shared.transport.amqp import redact_url
from tests.conftest import TransportFactory

WAIT_S = 2.0  # generous: a message that exists arrives in milliseconds


def _queue(
    factory: TransportFactory,
    transport: Transport,
    *,
    quorum: bool = False,
    dead_letter: bool = True,
) -> str:
    name = factory.queue_name()
    transport.declare(queues=[QueueSpec(name, quorum=quorum, dead_letter=dead_letter)])
    return name


def _get(transport: Transport, queue: str) -> Delivery:
    delivery = transport.get(queue, timeout_s=WAIT_S)
    assert delivery is not None, f"nothing arrived on {queue} within {WAIT_S} s"
    return delivery


def _drain(transport: Transport, queue: str, quiet_s: float) -> list[bytes]:
    bodies = []
    while (delivery := transport.get(queue, timeout_s=quiet_s)) is not None:
        bodies.append(delivery.body)
        delivery.ack()
    return bodies


# --- publish and get ---------------------------------------------------------------------


def test_published_message_round_trips_with_its_headers(transport_factory: TransportFactory):
    # Given
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    # When
    transport.publish("", queue, b"\x00payload\xff", {"kind": "upload", "round": "7"})
    delivery = _get(transport, queue)
    # Then
    assert delivery.body == b"\x00payload\xff"
    assert dict(delivery.headers) == {"kind": "upload", "round": "7"}
    assert delivery.redelivered is False
    assert delivery.queue == queue
    delivery.ack()


def test_queue_delivers_in_publish_order(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    bodies = [f"m{i}".encode() for i in range(25)]
    for body in bodies:
        transport.publish("", queue, body)
    assert _drain(transport, queue, transport_factory.quiet_s) == bodies


def test_quorum_queue_keeps_order_and_redelivers(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport, quorum=True)
    for body in (b"a", b"b", b"c"):
        transport.publish("", queue, body)
    first = _get(transport, queue)
    assert first.body == b"a"
    first.reject(requeue=True)
    # quorum queues requeue at the tail, classic ones at the head: only assert the set
    assert sorted(_drain(transport, queue, transport_factory.quiet_s)) == [b"a", b"b", b"c"]


def test_get_on_an_empty_queue_returns_none_after_the_timeout(
    transport_factory: TransportFactory,
):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    started = time.monotonic()
    assert transport.get(queue, timeout_s=0.3) is None
    assert 0.25 <= time.monotonic() - started < 1.5


def test_get_returns_a_message_published_while_waiting(transport_factory: TransportFactory):
    # Given a consumer waiting in get() and a publisher (its own client) in another thread
    consumer = transport_factory()
    queue = _queue(transport_factory, consumer)

    def publish_late() -> None:
        producer = transport_factory()  # a connection belongs to the thread that opened it
        producer.publish("", queue, b"late")
        producer.close()

    publisher = threading.Timer(0.2, publish_late)
    # When
    started = time.monotonic()
    publisher.start()
    delivery = consumer.get(queue, timeout_s=5.0)
    publisher.join()
    # Then it wakes on arrival rather than at the timeout
    assert delivery is not None and delivery.body == b"late"
    assert time.monotonic() - started < 2.0
    delivery.ack()


def test_non_bytes_body_and_non_str_headers_are_refused(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    with pytest.raises(TypeError):
        transport.publish("", queue, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        transport.publish("", queue, bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        transport.publish("", queue, b"x", {"round": 7})  # type: ignore[dict-item]
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None


def test_body_over_the_limit_raises_message_too_large(transport_factory: TransportFactory):
    transport = transport_factory(max_message_bytes=1024)
    queue = _queue(transport_factory, transport)
    with pytest.raises(MessageTooLarge):
        transport.publish("", queue, b"x" * 1025)
    transport.publish("", queue, b"x" * 1024)
    assert [len(b) for b in _drain(transport, queue, transport_factory.quiet_s)] == [1024]


# --- settlement ----------------------------------------------------------------------


def test_acked_message_is_gone_for_every_consumer(transport_factory: TransportFactory):
    first = transport_factory()
    queue = _queue(transport_factory, first)
    first.publish("", queue, b"once")
    _get(first, queue).ack()
    first.close()
    assert transport_factory().get(queue, timeout_s=transport_factory.quiet_s) is None


def test_rejected_with_requeue_comes_back_redelivered(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"a", {"k": "v"})
    transport.publish("", queue, b"b")
    # When
    _get(transport, queue).reject(requeue=True)
    again = _get(transport, queue)
    # Then a classic queue puts it back at the head
    assert (again.body, dict(again.headers), again.redelivered) == (b"a", {"k": "v"}, True)
    again.ack()
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"b"]


def test_rejected_without_requeue_is_dead_lettered_with_origin_and_reason(
    transport_factory: TransportFactory,
):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"poison", {"kind": "upload"})
    # When
    _get(transport, queue).reject(requeue=False, reason="DecodeError: bad schema")
    # Then
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None
    dead = _get(transport, transport.dead_letters())
    assert dead.body == b"poison"
    assert dead.headers["kind"] == "upload"
    assert dead.headers[HEADER_ORIGINAL_QUEUE] == queue
    assert dead.headers[HEADER_REJECT_REASON] == "DecodeError: bad schema"
    assert dead.queue == transport.dead_letters()
    dead.ack()


def test_dead_letter_without_reason_has_no_reason_header(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"x")
    _get(transport, queue).reject(requeue=False)
    dead = _get(transport, transport.dead_letters())
    assert dead.headers[HEADER_ORIGINAL_QUEUE] == queue
    assert HEADER_REJECT_REASON not in dead.headers
    dead.ack()


def test_queue_without_dead_lettering_drops_rejected_messages(
    transport_factory: TransportFactory,
):
    transport = transport_factory()
    queue = _queue(transport_factory, transport, dead_letter=False)
    transport.publish("", queue, b"x")
    _get(transport, queue).reject(requeue=False, reason="dropped")
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None
    assert transport.get(transport.dead_letters(), timeout_s=transport_factory.quiet_s) is None


@pytest.mark.parametrize("second", ["ack", "reject"])
def test_settling_a_delivery_twice_raises(transport_factory: TransportFactory, second: str):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"x")
    delivery = _get(transport, queue)
    delivery.ack()
    with pytest.raises(TransportError):
        if second == "ack":
            delivery.ack()
        else:
            delivery.reject(requeue=True)


def test_unsettled_delivery_of_a_closed_client_goes_to_the_next_consumer(
    transport_factory: TransportFactory,
):
    # Given a consumer that took a message and closed without settling it
    first, second = transport_factory(), transport_factory()
    queue = _queue(transport_factory, first)
    first.publish("", queue, b"work")
    taken = _get(first, queue)
    # When
    first.close()
    # Then
    again = _get(second, queue)
    assert (again.body, again.redelivered) == (b"work", True)
    again.ack()
    with pytest.raises(TransportClosed):
        taken.ack()


def test_prefetch_bounds_unsettled_deliveries_per_queue(transport_factory: TransportFactory):
    transport = transport_factory(prefetch=1)
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"1")
    transport.publish("", queue, b"2")
    first = _get(transport, queue)
    # While one delivery is unsettled the next one is held back (AMQP basic_qos)
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None
    first.ack()
    assert _get(transport, queue).body == b"2"


def test_ack_from_a_worker_thread_takes_effect_while_the_owner_serves_events(
    transport_factory: TransportFactory,
):
    # Given a delivery handed to a worker thread (DESIGN §3: train off the owner thread)
    owner = transport_factory()
    queue = _queue(transport_factory, owner)
    owner.publish("", queue, b"task")
    delivery = _get(owner, queue)

    def train_then_ack() -> None:
        time.sleep(0.2)
        delivery.ack()

    worker = threading.Thread(target=train_then_ack)
    # When the owner keeps serving the connection until the worker is done
    worker.start()
    while worker.is_alive():
        owner.process_events(0.05)
    worker.join()
    owner.process_events(0.1)
    owner.close()
    # Then the ack went through: nobody gets the message again
    assert transport_factory().get(queue, timeout_s=transport_factory.quiet_s) is None


def test_dead_lettering_from_a_worker_thread_keeps_origin_and_reason(
    transport_factory: TransportFactory,
):
    owner = transport_factory()
    queue = _queue(transport_factory, owner)
    owner.publish("", queue, b"bad upload")
    delivery = _get(owner, queue)
    worker = threading.Thread(target=delivery.reject, kwargs={"requeue": False, "reason": "bad"})
    worker.start()
    worker.join()
    # the owner serves the scheduled reject (a confirmed republish) inside get()
    dead = _get(owner, owner.dead_letters())
    assert (dead.body, dead.headers[HEADER_ORIGINAL_QUEUE]) == (b"bad upload", queue)
    assert dead.headers[HEADER_REJECT_REASON] == "bad"
    dead.ack()
    assert owner.get(queue, timeout_s=transport_factory.quiet_s) is None


def test_ack_from_a_worker_thread_is_applied_by_close(transport_factory: TransportFactory):
    owner = transport_factory()
    queue = _queue(transport_factory, owner)
    owner.publish("", queue, b"task")
    delivery = _get(owner, queue)
    worker = threading.Thread(target=delivery.ack)
    worker.start()
    worker.join()
    owner.close()  # no process_events in between
    assert transport_factory().get(queue, timeout_s=transport_factory.quiet_s) is None


def test_settling_after_close_raises_transport_closed(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"x")
    delivery = _get(transport, queue)
    transport.close()
    transport.close()  # idempotent
    with pytest.raises(TransportClosed):
        delivery.reject(requeue=True)
    with pytest.raises(TransportClosed):
        transport.publish("", queue, b"y")


# --- topology ------------------------------------------------------------------------


def test_direct_exchange_routes_by_routing_key(transport_factory: TransportFactory):
    transport = transport_factory()
    exchange = transport_factory.exchange_name()
    q1, q2 = transport_factory.queue_name(), transport_factory.queue_name()
    transport.declare(
        [ExchangeSpec(exchange, "direct")],
        [QueueSpec(q1, ((exchange, "client.1"),)), QueueSpec(q2, ((exchange, "client.2"),))],
    )
    transport.publish(exchange, "client.1", b"for 1")
    transport.publish(exchange, "client.2", b"for 2")
    assert _drain(transport, q1, transport_factory.quiet_s) == [b"for 1"]
    assert _drain(transport, q2, transport_factory.quiet_s) == [b"for 2"]


def test_fanout_exchange_copies_to_every_bound_queue(transport_factory: TransportFactory):
    transport = transport_factory()
    exchange = transport_factory.exchange_name()
    queues = [transport_factory.queue_name() for _ in range(3)]
    transport.declare(
        [ExchangeSpec(exchange, "fanout")], [QueueSpec(q, ((exchange, ""),)) for q in queues]
    )
    transport.publish(exchange, "ignored", b"round 3")
    assert [_drain(transport, q, transport_factory.quiet_s) for q in queues] == [[b"round 3"]] * 3


def test_unroutable_publish_raises(transport_factory: TransportFactory):
    transport = transport_factory()
    exchange = transport_factory.exchange_name()
    transport.declare([ExchangeSpec(exchange, "direct")])
    with pytest.raises(TransportError):
        transport.publish("", transport_factory.queue_name("missing"), b"x")
    with pytest.raises(TransportError):
        transport.publish(exchange, "nobody-bound", b"x")
    with pytest.raises(TransportError):
        transport.publish(transport_factory.exchange_name("missing"), "k", b"x")
    # the transport stays usable after the broker refused
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"ok")
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"ok"]


def test_declare_is_idempotent_and_refuses_conflicts(transport_factory: TransportFactory):
    transport = transport_factory()
    exchange, queue = transport_factory.exchange_name(), transport_factory.queue_name()
    specs = ([ExchangeSpec(exchange, "fanout")], [QueueSpec(queue, ((exchange, ""),))])
    transport.declare(*specs)
    transport.publish(exchange, "", b"kept")
    transport.declare(*specs)  # again: nothing changes, nothing is lost
    with pytest.raises(TransportError):
        transport.declare([ExchangeSpec(exchange, "direct")])
    with pytest.raises(TransportError):
        transport.declare(queues=[QueueSpec(queue, quorum=True)])
    with pytest.raises(TransportError):
        transport.declare([ExchangeSpec(transport_factory.exchange_name(), "topic")])
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"kept"]


def test_get_on_an_undeclared_queue_raises(transport_factory: TransportFactory):
    transport = transport_factory()
    with pytest.raises(TransportError):
        transport.get(transport_factory.queue_name("undeclared"), timeout_s=0.2)
    queue = _queue(transport_factory, transport)  # still usable
    transport.publish("", queue, b"ok")
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"ok"]


def test_get_error_keeps_other_unsettled_deliveries_valid(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"held")
    held = _get(transport, queue)
    with pytest.raises(TransportError):
        transport.get(transport_factory.queue_name("undeclared"), timeout_s=0.2)
    held.ack()
    transport.close()
    assert transport_factory().get(queue, timeout_s=transport_factory.quiet_s) is None


def test_purge_drops_ready_messages_and_counts_them(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    for i in range(4):
        transport.publish("", queue, bytes([i]))
    assert transport.purge(queue) == 4
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None
    assert transport.purge(queue) == 0
    with pytest.raises(TransportError):
        transport.purge(transport_factory.queue_name("undeclared"))


def test_purge_counts_messages_a_consumer_had_buffered(transport_factory: TransportFactory):
    transport = transport_factory(prefetch=5)
    queue = _queue(transport_factory, transport)
    for i in range(4):
        transport.publish("", queue, bytes([i]))
    _get(transport, queue).ack()  # the consumer may now hold the other three locally
    assert transport.purge(queue) == 3
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None


def test_deleted_queue_is_gone(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"x")
    transport.delete_queue(queue)
    transport.delete_queue(queue)  # deleting what does not exist is fine
    with pytest.raises(TransportError):
        transport.get(queue, timeout_s=0.2)
    with pytest.raises(TransportError):
        transport.publish("", queue, b"x")


# --- choosing the implementation -----------------------------------------------------


def test_open_transport_picks_the_implementation_from_the_url():
    transport = open_transport("memory://", prefetch=3, heartbeat_s=5)  # heartbeat: ignored
    assert isinstance(transport, InMemoryTransport)
    transport.close()
    with pytest.raises(ConfigError) as info:
        open_transport("redis://user:secret@localhost:6379/0")
    assert "secret" not in str(info.value)


def test_amqp_url_password_is_redacted():
    assert redact_url("amqp://scarlet:s3cr3t@broker:5672/fl") == "amqp://scarlet:***@broker:5672/fl"
    assert redact_url("amqp://broker:5672/%2F") == "amqp://broker:5672/%2F"


# ---------------------------------------------------------------------- bounded queues


def _drain(transport: Transport, queue: str, quiet_s: float) -> list[bytes]:
    bodies = []
    while (delivery := transport.get(queue, timeout_s=quiet_s)) is not None:
        bodies.append(delivery.body)
        delivery.ack()
    return bodies


@pytest.mark.parametrize("quorum", [False, True])
def test_a_full_queue_drops_its_oldest_message(transport_factory: TransportFactory, quorum):
    # Given a queue bounded at two messages (drop-head, the default overflow)
    transport = transport_factory()
    queue = transport_factory.queue_name()
    transport.declare(queues=[QueueSpec(queue, quorum=quorum, max_length=2)])
    # When three arrive
    for body in (b"1", b"2", b"3"):
        transport.publish("", queue, body)
    # Then the first is gone
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"2", b"3"]


def test_a_full_queue_with_reject_overflow_refuses_the_publish(
    transport_factory: TransportFactory,
):
    # Given a (classic) queue bounded at two messages that refuses overflow; RabbitMQ
    # quorum queues enforce reject-publish only approximately, so the bounded queues of
    # the federation that refuse overflow (the cache-RPC queue) are classic
    transport = transport_factory()
    queue = transport_factory.queue_name()
    transport.declare(queues=[QueueSpec(queue, max_length=2, reject_overflow=True)])
    transport.publish("", queue, b"1")
    transport.publish("", queue, b"2")
    # When a third is published, Then the publisher is told and nothing is lost or replaced
    with pytest.raises(TransportError):
        transport.publish("", queue, b"3")
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"1", b"2"]


def test_messages_older_than_the_ttl_are_dropped(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = transport_factory.queue_name()
    transport.declare(queues=[QueueSpec(queue, message_ttl_s=0.2)])
    transport.publish("", queue, b"old")
    time.sleep(0.5)
    transport.publish("", queue, b"new")
    assert _drain(transport, queue, transport_factory.quiet_s) == [b"new"]


def test_a_queue_redeclared_with_other_bounds_is_refused(transport_factory: TransportFactory):
    transport = transport_factory()
    queue = transport_factory.queue_name()
    transport.declare(queues=[QueueSpec(queue, max_length=5)])
    with pytest.raises(TransportError):
        transport.declare(queues=[QueueSpec(queue, max_length=6)])


# --- batches: get_many and ack_many ----------------------------------------------------


def _take(transport: Transport, queue: str, count: int, max_count: int) -> list[Delivery]:
    """``count`` deliveries through get_many, each batch at most ``max_count`` long."""
    taken: list[Delivery] = []
    deadline = time.monotonic() + WAIT_S
    while len(taken) < count and time.monotonic() < deadline:
        batch = transport.get_many(queue, max_count=max_count, timeout_s=WAIT_S)
        assert len(batch) <= max_count
        taken.extend(batch)
    assert len(taken) == count, f"{len(taken)} of {count} deliveries arrived"
    return taken


def test_get_many_waits_for_the_first_delivery_only(transport_factory: TransportFactory):
    transport = transport_factory(prefetch=8)
    queue = _queue(transport_factory, transport)
    transport.publish("", queue, b"only")
    started = time.monotonic()
    batch = transport.get_many(queue, max_count=8, timeout_s=WAIT_S)
    assert [d.body for d in batch] == [b"only"]
    assert time.monotonic() - started < WAIT_S / 2  # it did not wait for seven more
    transport.ack_many(batch)
    assert transport.get_many(queue, max_count=8, timeout_s=transport_factory.quiet_s) == []
    with pytest.raises(ValueError):
        transport.get_many(queue, max_count=0, timeout_s=0)


def test_get_many_keeps_queue_order_and_the_prefetch_window(transport_factory: TransportFactory):
    # Given six messages and a window of three
    transport = transport_factory(prefetch=3)
    queue = _queue(transport_factory, transport)
    for i in range(6):
        transport.publish("", queue, f"m{i}".encode())
    # When three are taken and not yet settled
    first = _take(transport, queue, 3, max_count=10)
    # Then the window is full: nothing more comes until they are acked
    assert transport.get_many(queue, max_count=10, timeout_s=transport_factory.quiet_s) == []
    transport.ack_many(first)
    rest = _take(transport, queue, 3, max_count=10)
    transport.ack_many(rest)
    assert [d.body for d in first + rest] == [f"m{i}".encode() for i in range(6)]


def test_ack_many_with_a_dead_lettered_delivery_in_the_middle(
    transport_factory: TransportFactory,
):
    # Given a batch of five
    transport = transport_factory(prefetch=10)
    queue = _queue(transport_factory, transport)
    for i in range(5):
        transport.publish("", queue, bytes([i]))
    batch = _take(transport, queue, 5, max_count=10)
    # When the middle one is dead-lettered first and the other four acked together
    batch[2].reject(requeue=False, reason="invalid")
    transport.ack_many([d for i, d in enumerate(batch) if i != 2])
    # Then each was settled once: four gone, one dead letter, nothing left to settle
    with pytest.raises(TransportError):
        batch[0].ack()
    transport.close()
    again = transport_factory()
    assert again.get(queue, timeout_s=transport_factory.quiet_s) is None
    dead = _drain(again, again.dead_letters(), transport_factory.quiet_s)
    assert dead == [bytes([2])]


def test_ack_many_leaves_other_unsettled_deliveries_alone(transport_factory: TransportFactory):
    # Given one delivery of queue A handed out, two more of A waiting in the window, and a
    # batch of queue B taken after them (on AMQP B's tags lie above A's)
    transport = transport_factory(prefetch=10)
    queue_a, queue_b = _queue(transport_factory, transport), _queue(transport_factory, transport)
    for i in range(3):
        transport.publish("", queue_a, f"a{i}".encode())
    held = _get(transport, queue_a)
    transport.process_events(transport_factory.quiet_s)  # let a1, a2 reach the window
    for i in range(2):
        transport.publish("", queue_b, f"b{i}".encode())
    batch = _take(transport, queue_b, 2, max_count=10)
    # When B's batch is acked and the client goes away
    transport.ack_many(batch)
    assert held.body == b"a0"
    transport.close()
    # Then all of A comes again (none was acked by a multiple ack), none of B
    again = transport_factory()
    assert sorted(_drain(again, queue_a, transport_factory.quiet_s)) == [b"a0", b"a1", b"a2"]
    assert _drain(again, queue_b, transport_factory.quiet_s) == []


def test_a_batch_not_acked_before_a_crash_comes_again(transport_factory: TransportFactory):
    # Given a batch taken (and, say, recorded) but not acked when its client goes away
    consumer = transport_factory(prefetch=10)
    queue = _queue(transport_factory, consumer)
    for i in range(3):
        consumer.publish("", queue, bytes([i]))
    batch = _take(consumer, queue, 3, max_count=10)
    consumer.close()
    # Then the late ack fails and every message is delivered again, marked redelivered
    with pytest.raises(TransportClosed):
        consumer.ack_many(batch)
    again = transport_factory(prefetch=10)
    redelivered = _take(again, queue, 3, max_count=10)
    assert [(d.body, d.redelivered) for d in redelivered] == [(bytes([i]), True) for i in range(3)]
    again.ack_many(redelivered)


def test_ack_many_refuses_a_settled_delivery_and_acks_nothing(
    transport_factory: TransportFactory,
):
    transport = transport_factory(prefetch=10)
    queue = _queue(transport_factory, transport)
    for body in (b"x", b"y"):
        transport.publish("", queue, body)
    x, y = _take(transport, queue, 2, max_count=10)
    x.ack()
    with pytest.raises(TransportError):
        transport.ack_many([x, y])
    with pytest.raises(TransportError):
        transport.ack_many([y, y])
    y.ack()  # still unsettled: the refused batch acked nothing
    assert transport.get(queue, timeout_s=transport_factory.quiet_s) is None
