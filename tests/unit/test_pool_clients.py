"""Pool mode at scale, in process: compact state blobs, the embedded results, flat memory.

A pool worker builds a client's runtime for one task from the state store and drops it
after the save. These tests drive the embedded federation with every client served that
way (a file store, the compact blob format) and check that the rounds come out exactly
as with every runtime kept in memory, that no runtime outlives its task, and that the
blob restores a runtime bit for bit while holding only the replica rows in use.
"""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation
from services.worker.client_state import pack_client_state, unpack_client_state
from services.worker.clients import PoolClients
from shared.errors import DecodeError
from shared.protocol.tensors import decode_tensor_map, encode_tensor_map
from shared.rounds.client import ClientRuntime
from shared.rounds.setup import build_runtime, prepare_data
from shared.state.files import FileClientStateStore
from tests.conftest import tiny_config

CONFIG = tiny_config(
    run_id="pool-scale",
    clients=30,
    sample_ratio=0.2,
    rounds=5,
    samples_per_client=30,
    public_size=400,
    public_per_round=60,
    cache_duration=3,
)


class _CountingPool(PoolClients):
    """PoolClients that remembers a weak reference to every runtime it built."""

    built: list[weakref.ref[ClientRuntime]]

    def get(self, client_id: int) -> ClientRuntime | None:
        runtime = super().get(client_id)
        if runtime is not None:
            self.built.append(weakref.ref(runtime))
        return runtime


def _records(federation: EmbeddedFederation) -> list[tuple[object, ...]]:
    federation.run()
    return [
        (
            r.round,
            r.server_accuracy,
            r.client_accuracy if not math.isnan(r.client_accuracy) else None,
            r.clients,
            r.requested,
            r.reused,
            r.wire_bytes_up,
            r.wire_bytes_down,
            r.cache_version,
        )
        for r in federation.results.rounds
    ]


@pytest.fixture(scope="module")
def in_memory() -> tuple[EmbeddedFederation, list[tuple[object, ...]]]:
    federation = EmbeddedFederation(CONFIG, prepare_data(CONFIG))
    return federation, _records(federation)


def test_clients_served_from_a_state_store_give_the_in_memory_rounds_and_none_is_kept(
    in_memory: tuple[EmbeddedFederation, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    # Given the same federation, every task served by a pool provider over a file store
    steady, want = in_memory
    data = prepare_data(CONFIG)
    pooled = EmbeddedFederation(CONFIG, data)
    pool = _CountingPool(CONFIG, data, FileClientStateStore(tmp_path / "state"))
    pool.built = []
    for handler in pooled.handlers:
        handler.provider = pool
    # When
    got = _records(pooled)
    gc.collect()
    # Then the rounds are the in-memory ones, bit for bit
    assert got == want
    assert np.array_equal(pooled.global_labels(), steady.global_labels())
    # and every runtime was dropped after its task, however many clients were served
    served = {ref().client_id for ref in pool.built if ref() is not None}
    assert len(pool.built) == sum(r.clients for r in pooled.results.rounds) >= 25
    assert served == set()
    # each client's state is in its own file, and the replica rows only
    files = list((tmp_path / "state").iterdir())
    assert len(files) == len({k for r in range(CONFIG.rounds) for k in _sampled(pooled, r)})


def _sampled(federation: EmbeddedFederation, round_no: int) -> list[int]:
    from shared.rounds.aggregator import sampled_clients

    return list(sampled_clients(federation.config, round_no))


def test_the_compact_blob_restores_a_runtime_bit_for_bit_and_is_smaller(
    in_memory: tuple[EmbeddedFederation, list[tuple[object, ...]]],
) -> None:
    # Given runtimes after five rounds of partial participation
    steady, _ = in_memory
    runtimes = [rt for rt in steady.clients.runtimes if rt.completed_round >= 0]
    assert runtimes
    for runtime in runtimes:
        state = runtime.state_dict()
        # When
        blob = pack_client_state(state)
        fresh = build_runtime(CONFIG, steady.data, runtime.client_id)
        fresh.load_state_dict(unpack_client_state(blob))
        # Then
        again = fresh.state_dict()
        assert again.keys() == state.keys()
        for key, value in state.items():
            assert np.array_equal(again[key], value) and again[key].dtype == value.dtype, key
        held = int((state["cache.written"] != -1).sum())
        assert held < CONFIG.public_size
        assert len(blob) < len(encode_tensor_map(state)) - (CONFIG.public_size - held) * 40


def test_a_dense_blob_of_the_earlier_format_still_loads() -> None:
    # Given a state saved before the compact format
    data = prepare_data(CONFIG)
    runtime = build_runtime(CONFIG, data, 3)
    runtime.cache.labels[[5, 9]] = 0.5  # type: ignore[union-attr]
    runtime.cache.written[[5, 9]] = 2  # type: ignore[union-attr]
    legacy = encode_tensor_map(runtime.state_dict())
    # When
    state = unpack_client_state(legacy)
    # Then
    assert np.array_equal(state["cache.written"], runtime.cache.written)  # type: ignore[union-attr]


def test_rows_that_are_not_empty_but_unwritten_are_kept_too() -> None:
    # Given a replica row with a label but no written round (not made by the rules)
    state = {
        "cache.labels": np.zeros((6, 3), dtype=np.float32),
        "cache.written": np.full(6, -1, dtype=np.int64),
    }
    state["cache.labels"][4] = [0.25, 0.25, 0.5]
    state["cache.written"][1] = 7
    # When
    restored = unpack_client_state(pack_client_state(state))
    # Then
    assert np.array_equal(restored["cache.labels"], state["cache.labels"])
    assert np.array_equal(restored["cache.written"], state["cache.written"])
    assert len(decode_tensor_map(pack_client_state(state))["cache.rows"]) == 2


def test_compact_rows_outside_the_replica_are_a_decode_error() -> None:
    state = {
        "cache.labels": np.zeros((6, 3), dtype=np.float32),
        "cache.written": np.full(6, -1, dtype=np.int64),
    }
    state["cache.written"][5] = 1
    doc = decode_tensor_map(pack_client_state(state))
    doc["cache.shape"] = np.array([5, 3], dtype=np.int64)
    with pytest.raises(DecodeError, match="do not fit"):
        unpack_client_state(encode_tensor_map(doc))
