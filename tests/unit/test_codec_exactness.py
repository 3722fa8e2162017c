"""Replicas stay exact under every codec: the server caches what every client decodes.

Budget: about 30 s of CPU (six short embedded federations of digits, property tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from prometheus_client import CollectorRegistry

from shared.cache_policy import NEVER
from shared.metrics import Metrics
from shared.protocol.codec import DecodeLimits, decode_task, encode_task
from shared.protocol.messages import CatchUp, TrainTask
from shared.protocol.softlabels import (
    CodecSpec,
    decode_soft_labels,
    encode_soft_labels,
    roundtrip,
)

CODECS = [
    "f32",
    "f16",
    "f16+zstd",
    "q8",
    "q4+zstd",
    "q8+delta+zstd",
    "q2",
    "q8+ans",
    "q4+delta+ans",
]


@st.composite
def simplex_rows(draw: st.DrawFn) -> np.ndarray:
    """Rows as a model's float32 softmax (torch's, what workers upload), sharpened."""
    n = draw(st.integers(1, 16))
    c = draw(st.integers(2, 100))
    logits = draw(arrays(np.float32, (n, c), elements=st.floats(-30, 30, width=32)))
    beta = draw(st.sampled_from([1.0, 2.0, 4.0]))
    probs = torch.softmax(torch.from_numpy(logits), dim=1) ** beta
    return (probs / probs.sum(dim=1, keepdim=True)).numpy()


@pytest.mark.parametrize("text", CODECS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(probs=simplex_rows())
def test_sending_decoded_rows_again_decodes_them_bit_for_bit(text, probs):
    # Given: rows a receiver decoded (what the server caches)
    spec = CodecSpec.parse(text)
    decoded = roundtrip(probs, spec)
    reference = decoded if spec.delta else None
    n, c = decoded.shape
    # When: they are encoded and decoded again, as the next round's targets are
    again = decode_soft_labels(
        encode_soft_labels(decoded, spec, reference), reference=reference, max_rows=n, num_classes=c
    )
    # Then: the round trip is a projection
    assert np.array_equal(again, decoded)
    assert np.array_equal(roundtrip(decoded, spec, reference), decoded)


@pytest.mark.parametrize("text", CODECS)
def test_catch_up_rows_arrive_bit_for_bit_under_every_downlink_codec(text):
    # Given: cache entries as this codec decodes them, sent as a catch-up
    spec = CodecSpec.parse(text)
    generator = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(40, 10, generator=generator) * 3, 1).numpy()
    entries = roundtrip(probs, spec)
    catch_up = CatchUp(
        update_indices=np.arange(40, dtype=np.int64) * 2,
        update_labels=entries,
        update_written=np.full(40, 3, dtype=np.int64),
        clear_indices=np.array([1, 3], dtype=np.int64),
    )
    task = TrainTask(
        run_id="exact",
        round=4,
        client_id=0,
        request_indices=np.arange(5, dtype=np.int64),
        targets=None,
        catch_up=catch_up,
        cache_version=9,
        targets_digest="",
    )
    # When
    decoded = decode_task(encode_task(task, spec, public_size=100), DecodeLimits(100, 10))
    # Then
    assert decoded.catch_up is not None
    assert np.array_equal(decoded.catch_up.update_labels, entries)


@pytest.mark.parametrize(
    "text", ["f32", "f16", "q8+delta+zstd", "q4", "q2+zstd", "f16+zstd", "q8+ans"]
)
def test_every_codec_keeps_replicas_exact_over_rounds_with_partial_participation(text):
    # Given: 4 clients, half sampled each round, short cache duration (catch-ups and
    # expiries happen), beta 1 (the f16 case that used to hang in round 8)
    from scarlet.simulate import EmbeddedFederation, prepare_data
    from shared.config import FederationConfig

    config = FederationConfig(
        dataset="digits",
        clients=4,
        sample_ratio=0.5,
        samples_per_client=40,
        public_size=120,
        public_per_round=60,
        rounds=5,
        test_per_client=10,
        local_epochs=1,
        distill_epochs=1,
        server_distill_epochs=1,
        cache_duration=2,
        beta=1.0,
        downlink_codec=text,
    )
    metrics = Metrics.create(CollectorRegistry())
    federation = EmbeddedFederation(config, prepare_data(config), metrics)
    server = federation.aggregator.core
    compared = 0
    previous: tuple[np.ndarray, np.ndarray] | None = None
    # When
    for _ in range(config.rounds):
        federation.run_round()
        assert server.cache is not None
        if previous is not None:
            labels, written = previous
            for k in server.clients:  # they applied the previous round's commit
                replica = federation.clients.runtimes[k].cache
                assert replica is not None
                held = replica.written != NEVER
                # Then: every entry a replica holds is the server's, bit for bit
                assert np.array_equal(
                    replica.written[held & (written != NEVER)], written[held & (written != NEVER)]
                )
                both = held & (written != NEVER)
                assert np.array_equal(replica.labels[both], labels[both])
                compared += int(both.sum())
        previous = (server.cache.labels.copy(), server.cache.written.copy())
    # Then: no task met a desync, every sampled client's task was done
    get = metrics.registry.get_sample_value
    assert (get("scarlet_worker_tasks_total", {"outcome": "desync"}) or 0) == 0
    done = get("scarlet_worker_tasks_total", {"outcome": "done"})
    assert done == config.rounds * 2
    assert compared > 0
