"""A pinned client's state dir: a killed worker continues with bit-identical uploads.

The state a round needs is the model, the cache replica and the progress (completed
round, last upload). Randomness is not carried between rounds: each round's shuffling
comes from a generator seeded by (seed, round, client) and SGD has no momentum, so no
RNG or optimiser state has to be saved; this test is what proves it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.worker.clients import PinnedClient
from shared.config import FederationConfig
from shared.data import FederatedData
from shared.protocol.codec import encode_upload
from shared.protocol.messages import DistillTargets, TrainTask
from shared.rounds.aggregator import drawn_public_indices
from shared.rounds.setup import build_runtime, prepare_data
from shared.state.files import FileClientStateStore
from tests.conftest import tiny_config

CONFIG = tiny_config(
    run_id="state-test",
    clients=2,
    samples_per_client=40,
    public_size=30,
    public_per_round=12,
    rounds=4,
    cache_duration=0,
)


def _task(round_no: int, classes: int) -> TrainTask:
    targets = None
    if round_no > 0:
        g = torch.Generator().manual_seed(round_no)
        indices = np.sort(drawn_public_indices(CONFIG, round_no - 1)[:6])
        labels = torch.softmax(torch.randn(6, classes, generator=g), dim=1).numpy()
        targets = DistillTargets(round_no - 1, indices, None, labels)
    return TrainTask(
        run_id=CONFIG.run_id,
        round=round_no,
        client_id=1,
        request_indices=np.sort(drawn_public_indices(CONFIG, round_no)[:5]),
        targets=targets,
        catch_up=None,
        cache_version=0,
    )


def _round(client: PinnedClient, round_no: int, data: FederatedData) -> bytes:
    runtime = client.runtime
    upload = runtime.handle(_task(round_no, data.num_classes))
    body = encode_upload(upload, CONFIG.uplink_spec, public_size=CONFIG.public_size)
    runtime.completed_round, runtime.last_upload = round_no, body
    client.save(runtime)
    return body


def _fresh(config: FederationConfig, data: FederatedData, store: FileClientStateStore | None):
    return PinnedClient(build_runtime(config, data, 1), store)


def test_a_restarted_client_continues_with_the_same_upload_bytes_as_one_never_stopped(
    tmp_path: Path,
):
    # Given an uninterrupted client and one whose process "dies" after round 1
    data = prepare_data(CONFIG)
    steady = _fresh(CONFIG, data, None)
    want = [_round(steady, t, data) for t in range(3)]
    store = FileClientStateStore(tmp_path / "worker-1")
    first = _fresh(CONFIG, data, store)
    got = [_round(first, t, data) for t in range(2)]
    # When a new process builds the client again from the state dir
    torch.manual_seed(12345)  # another process: its global RNG is anywhere
    second = _fresh(CONFIG, data, FileClientStateStore(tmp_path / "worker-1"))
    # Then it resumes after round 1 and round 2's upload is bit-identical
    assert second.runtime.completed_round == 1
    assert second.runtime.last_upload == got[1]
    got.append(_round(second, 2, data))
    assert got == want


def test_the_state_file_is_replaced_atomically_leaving_no_temporary_files(tmp_path: Path):
    # Given a client saved twice
    data = prepare_data(CONFIG)
    store = FileClientStateStore(tmp_path / "state")
    client = _fresh(CONFIG, data, store)
    _round(client, 0, data)
    _round(client, 1, data)
    # When the folder is listed
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    # Then only the client's file is there
    assert names == ["client-1.bin"]
