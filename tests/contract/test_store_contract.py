"""One contract, two federation stores: every test runs on memory:// and on the local Redis.

The cache checks drive a real :class:`ServerCache` through several rounds and require the
store to hold exactly what the server cache holds (bit for bit, same digest), and the
change sets to rebuild it from any earlier version. Client state stores run the same way
on memory, files and Redis.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis

from shared.cache_policy import NEVER, ServerCache
from shared.errors import ConfigError, StateError
from shared.state import (
    CacheSnapshot,
    CacheUpdate,
    ClientStateStore,
    FederationStore,
    FileClientStateStore,
    MemoryClientStateStore,
    MemoryFederationStore,
    RedisClientStateStore,
    RedisFederationStore,
    open_client_store,
    open_federation_store,
)
from tests.arrays import softmax, softmax_rows
from tests.conftest import require_redis

REDIS_URL = os.environ.get("SCARLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
P, C, D = 40, 3, 2  # public set, classes, cache duration
EMPTY = np.empty(0, dtype=np.int64)

StoreFactory = Callable[..., FederationStore]


def _require_redis() -> None:
    parts = urlsplit(REDIS_URL)
    require_redis(parts.hostname or "127.0.0.1", parts.port or 6379)


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Opens stores of one backend; each call gets a fresh run id unless one is given."""
    if request.param == "redis":
        _require_redis()
    opened: list[FederationStore] = []

    def make(run_id: str | None = None, **opts: int) -> FederationStore:
        url = "memory://" if request.param == "memory" else REDIS_URL
        run_id = f"test-{uuid.uuid4().hex}" if run_id is None else run_id
        store = open_federation_store(url, run_id, **opts)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.delete_all()
        store.close()  # type: ignore[attr-defined]


@dataclass
class _Step:
    round_no: int
    update: CacheUpdate
    written: np.ndarray  # (P,) server cache after the commit
    labels: np.ndarray  # (P, C)


def _drive_server_cache(rounds: int, seed: int = 0, drawn_per_round: int = 15) -> list[_Step]:
    """Run a ServerCache through ``rounds`` rounds; one CacheUpdate per commit."""
    g = np.random.default_rng(seed)
    cache = ServerCache(P, C)
    steps = []
    for t in range(rounds):
        before = cache.written.copy()
        drawn = g.permutation(P)[:drawn_per_round]
        plan = cache.plan_requests(drawn, now=t, duration=D)
        fresh = softmax_rows(g, plan.requested.size, C)
        cache.commit(plan, fresh, now=t, duration=D)
        set_idx = np.flatnonzero((cache.written != before) & (cache.written == t))
        clear_idx = np.flatnonzero((before != NEVER) & (cache.written == NEVER))
        update = CacheUpdate(
            version=cache.version,
            digest=cache.digest(),
            set_indices=set_idx,
            set_written=cache.written[set_idx],
            set_labels=cache.labels[set_idx],
            clear_indices=clear_idx,
        )
        steps.append(_Step(t, update, cache.written.copy(), cache.labels.copy()))
    return steps


def _dense(snapshot: CacheSnapshot) -> tuple[np.ndarray, np.ndarray]:
    written = np.full(P, NEVER, dtype=np.int64)
    labels = np.zeros((P, C), dtype=np.float32)
    written[snapshot.indices] = snapshot.written
    labels[snapshot.indices] = snapshot.labels
    return written, labels


def _digest(written: np.ndarray, labels: np.ndarray) -> str:
    cache = ServerCache(*labels.shape)
    cache.written, cache.labels = written.copy(), labels.copy()
    return cache.digest()


def _update(version: int, written: np.ndarray, labels: np.ndarray, **parts: list[int]):
    """An update whose sets are already in the dense model; applies its clears to it."""
    set_idx = np.array(parts.get("set", []), dtype=np.int64)
    clear_idx = np.array(parts.get("clear", []), dtype=np.int64)
    written[clear_idx], labels[clear_idx] = NEVER, 0.0
    return CacheUpdate(
        version,
        _digest(written, labels),
        set_idx,
        written[set_idx],
        labels[set_idx],
        clear_idx,
    )


# --- uploads ----------------------------------------------------------------------------


def test_record_upload_is_idempotent_and_keeps_the_first_body(make_store: StoreFactory):
    # Given
    store = make_store()
    # When
    first = store.record_upload(3, 7, b"\x00first\xff")
    second = store.record_upload(3, 7, b"second")
    # Then
    assert (first, second) == (True, False)
    assert store.uploads(3) == {7: b"\x00first\xff"}


def test_uploads_round_trip_per_round(make_store: StoreFactory):
    # Given
    store = make_store()
    bodies = {0: b"", 1: bytes(range(256)), 12: b"x" * 100_000}
    # When
    for client, body in bodies.items():
        assert store.record_upload(5, client, body)
    store.record_upload(6, 0, b"next round")
    # Then
    assert store.uploads(5) == bodies
    assert store.uploads(6) == {0: b"next round"}
    assert store.uploads(4) == {}


def test_negative_round_or_client_is_rejected(make_store: StoreFactory):
    store = make_store()
    with pytest.raises(ValueError):
        store.record_upload(-1, 0, b"x")
    with pytest.raises(ValueError):
        store.record_upload(0, -2, b"x")


# --- the cache ----------------------------------------------------------------------------


def test_an_empty_store_is_version_zero_with_an_empty_snapshot(make_store: StoreFactory):
    store = make_store()
    snapshot = store.cache_snapshot()
    assert store.cache_version() == 0
    assert (snapshot.version, snapshot.full, snapshot.indices.size) == (0, True, 0)
    assert snapshot.digest == ServerCache(P, C).digest()
    assert store.load_aggregator() is None
    changes = store.cache_changes_since(0)
    assert changes is not None and changes.indices.size == changes.cleared.size == 0


def test_commits_reproduce_the_server_cache_bit_exactly(make_store: StoreFactory):
    # Given
    store = make_store()
    steps = _drive_server_cache(rounds=7)
    assert any(s.update.clear_indices.size for s in steps), "the trace should expire entries"
    for step in steps:
        # When
        store.commit_round(step.round_no, b"agg-%d" % step.round_no, step.update, C)
        snapshot = store.cache_snapshot()
        # Then
        written, labels = _dense(snapshot)
        assert snapshot.full and snapshot.cleared.size == 0
        assert snapshot.version == store.cache_version() == step.update.version
        assert np.array_equal(written, step.written)
        assert np.array_equal(labels.view(np.int32), step.labels.view(np.int32))  # bit-exact
        assert snapshot.digest == step.update.digest
        assert np.array_equal(snapshot.indices, np.sort(snapshot.indices))
        assert (snapshot.indices.dtype, snapshot.labels.dtype) == (np.int64, np.float32)


def test_commit_saves_the_aggregator_and_deletes_only_that_rounds_uploads(
    make_store: StoreFactory,
):
    # Given
    store = make_store()
    step = _drive_server_cache(rounds=1)[0]
    store.record_upload(0, 1, b"a")
    store.record_upload(1, 1, b"early upload of the next round")
    # When
    store.commit_round(0, b"\x00aggregator\xff", step.update, C)
    # Then
    assert store.uploads(0) == {}
    assert store.uploads(1) == {1: b"early upload of the next round"}
    assert store.load_aggregator() == b"\x00aggregator\xff"


@pytest.mark.parametrize("version_offset", [0, 2, -1])
def test_commit_with_the_wrong_version_changes_nothing(
    make_store: StoreFactory, version_offset: int
):
    # Given: one committed round and an upload of the next one
    store = make_store()
    first, second = _drive_server_cache(rounds=2)
    store.commit_round(0, b"agg-0", first.update, C)
    store.record_upload(1, 4, b"u")
    before = store.cache_snapshot()
    bad = CacheUpdate(
        version=max(first.update.version + version_offset, 1),
        digest=second.update.digest,
        set_indices=second.update.set_indices,
        set_written=second.update.set_written,
        set_labels=second.update.set_labels,
        clear_indices=second.update.clear_indices,
    )
    # When / Then
    with pytest.raises(StateError):
        store.commit_round(1, b"agg-1", bad, C)
    after = store.cache_snapshot()
    assert after.version == before.version == 1
    assert np.array_equal(after.indices, before.indices) and np.array_equal(
        after.labels, before.labels
    )
    assert store.load_aggregator() == b"agg-0"
    assert store.uploads(1) == {4: b"u"}


def test_commit_with_another_number_of_classes_is_refused(make_store: StoreFactory):
    # Given
    store = make_store()
    first = _drive_server_cache(rounds=1)[0]
    store.commit_round(0, b"agg", first.update, C)
    labels = np.full((1, C + 1), 1.0 / (C + 1), dtype=np.float32)
    update = CacheUpdate(2, "0" * 64, np.array([0]), np.array([1]), labels, EMPTY)
    # When / Then
    with pytest.raises(StateError, match="classes"):
        store.commit_round(1, b"agg-1", update, C + 1)
    assert store.cache_version() == 1
    assert store.load_aggregator() == b"agg"


def test_concurrent_commits_of_the_same_version_let_exactly_one_through(
    make_store: StoreFactory,
):
    # Given: eight threads racing to commit version 1, each with its own aggregator blob
    store = make_store()
    update = _drive_server_cache(rounds=1)[0].update
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def commit(n: int) -> None:
        start.wait()
        try:
            store.commit_round(0, b"agg-%d" % n, update, C)
            outcomes.append(f"ok-{n}")
        except StateError:
            outcomes.append("refused")

    # When
    threads = [threading.Thread(target=commit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(winners) == 1 and outcomes.count("refused") == 7
    assert store.cache_version() == 1
    assert store.load_aggregator() == b"agg-" + winners[0].split("-")[1].encode()


@pytest.mark.parametrize(
    "problem",
    ["duplicate index", "set and cleared", "negative index", "labels shape", "nan", "digest"],
)
def test_a_malformed_update_is_rejected_before_anything_changes(
    make_store: StoreFactory, problem: str
):
    store = make_store()
    idx = {
        "duplicate index": [1, 1],
        "set and cleared": [1, 2],
        "negative index": [-1, 2],
    }.get(problem, [1, 2])
    labels = np.full((2, C), 1.0 / C, dtype=np.float32)
    if problem == "labels shape":
        labels = labels[:, :2]
    if problem == "nan":
        labels[0, 0] = float("nan")
    clear = [2] if problem == "set and cleared" else []
    update = CacheUpdate(
        1,
        "not hex" if problem == "digest" else "0" * 64,
        np.array(idx),
        np.zeros(2, dtype=np.int64),
        labels,
        np.array(clear, dtype=np.int64),
    )
    with pytest.raises(ValueError):
        store.commit_round(0, b"agg", update, C)
    assert store.cache_version() == 0
    assert store.load_aggregator() is None


def test_a_snapshot_that_does_not_match_the_committed_digest_is_refused(
    make_store: StoreFactory,
):
    # Given: a commit whose digest is not the digest of its entries
    store = make_store()
    step = _drive_server_cache(rounds=1)[0]
    wrong = CacheUpdate(
        1,
        "f" * 64,
        step.update.set_indices,
        step.update.set_written,
        step.update.set_labels,
        step.update.clear_indices,
    )
    store.commit_round(0, b"agg", wrong, C)
    # When / Then
    with pytest.raises(StateError, match="digest"):
        store.cache_snapshot()


# --- changes since a version ------------------------------------------------------------------


def test_changes_since_list_exactly_what_changed_and_rebuild_the_snapshot(
    make_store: StoreFactory,
):
    # Given
    store = make_store()
    steps = _drive_server_cache(rounds=8, seed=3)
    for step in steps:
        store.commit_round(step.round_no, b"agg", step.update, C)
    current = store.cache_snapshot()
    states = [(np.full(P, NEVER, dtype=np.int64), np.zeros((P, C), dtype=np.float32))]
    states += [(s.written, s.labels) for s in steps]
    for version, (written_then, labels_then) in enumerate(states):
        # When
        changes = store.cache_changes_since(version)
        # Then: exactly the net changes
        assert changes is not None and not changes.full
        assert (changes.version, changes.digest) == (current.version, current.digest)
        now_written, now_labels = steps[-1].written, steps[-1].labels
        changed = (now_written != NEVER) & (
            (now_written != written_then) | (now_labels != labels_then).any(axis=1)
        )
        cleared = (written_then != NEVER) & (now_written == NEVER)
        assert np.array_equal(changes.indices, np.flatnonzero(changed))
        assert np.array_equal(changes.cleared, np.flatnonzero(cleared))
        # and applying them to a replica at that version reproduces the snapshot
        written, labels = written_then.copy(), labels_then.copy()
        written[changes.indices], labels[changes.indices] = changes.written, changes.labels
        written[changes.cleared], labels[changes.cleared] = NEVER, 0.0
        assert np.array_equal(written, now_written) and np.array_equal(labels, now_labels)
        assert _digest(written, labels) == current.digest


def test_changes_since_follow_overwrites_and_entries_set_then_cleared(make_store: StoreFactory):
    # Given
    store = make_store()
    written = np.full(P, NEVER, dtype=np.int64)
    labels = np.zeros((P, C), dtype=np.float32)

    def write(version: int, sets: dict[int, int], clear: list[int]) -> None:
        for index, round_no in sets.items():
            written[index] = round_no
            labels[index] = softmax(np.array([float(index), round_no, 1.0]))
        update = _update(version, written, labels, set=list(sets), clear=clear)
        store.commit_round(version, b"agg", update, C)

    write(1, {1: 1, 2: 1, 4: 1}, [])
    write(2, {1: 2, 3: 2, 4: 1}, [2])  # overwrite 1; set 3; 4 re-set unchanged; clear 2
    write(3, {2: 3}, [3])  # 2 comes back; 3 goes again
    # When
    since = {v: store.cache_changes_since(v) for v in range(4)}
    # Then
    got = {v: (c.indices.tolist(), c.cleared.tolist()) for v, c in since.items() if c}
    assert got == {
        0: ([1, 2, 4], []),  # 3 was set and cleared again: not a change since v0
        1: ([1, 2], []),  # 4 was re-set with identical bytes: not a change
        2: ([2], [3]),
        3: ([], []),
    }


def test_changes_since_beyond_the_log_are_none_and_ahead_is_an_error(make_store: StoreFactory):
    # Given: a log of two versions and five commits
    store = make_store(log_versions=2)
    for step in _drive_server_cache(rounds=5):
        store.commit_round(step.round_no, b"agg", step.update, C)
    # Then
    assert store.cache_changes_since(2) is None
    assert store.cache_changes_since(0) is None
    assert store.cache_changes_since(3) is not None
    assert store.cache_changes_since(5) is not None
    with pytest.raises(StateError):
        store.cache_changes_since(6)
    with pytest.raises(ValueError):
        store.cache_changes_since(-1)


# --- results, isolation, deletion ------------------------------------------------------------


def test_results_are_appended_in_order(make_store: StoreFactory):
    store = make_store()
    assert store.results() == []
    records = ['{"round": 0, "acc": 0.5}', '{"round": 1, "acc": 0.61, "note": "é"}']
    for record in records:
        store.append_result(record)
    assert store.results() == records


def test_runs_are_isolated_and_delete_all_forgets_only_its_own_run(make_store: StoreFactory):
    # Given: two runs on the same backend, one a prefix of the other's name
    run = f"iso-{uuid.uuid4().hex[:8]}"
    mine, other = make_store(run), make_store(run + "x")
    step = _drive_server_cache(rounds=1)[0]
    for store in (mine, other):
        store.record_upload(1, 2, b"u")
        store.commit_round(0, b"agg", step.update, C)
        store.append_result("{}")
    # When
    mine.delete_all()
    # Then
    assert (mine.cache_version(), mine.load_aggregator(), mine.results()) == (0, None, [])
    assert mine.uploads(1) == {} and mine.cache_snapshot().indices.size == 0
    assert other.cache_version() == 1 and other.uploads(1) == {2: b"u"}
    assert other.cache_snapshot().digest == step.update.digest


@pytest.mark.parametrize("run_id", ["", "a:b", "run*", "x" * 129, "-lead"])
def test_an_unsafe_run_id_is_rejected(make_store: StoreFactory, run_id: str):
    with pytest.raises(ValueError):
        make_store(run_id)


# --- opening by URL ----------------------------------------------------------------------------


def test_urls_pick_the_backend(tmp_path: Path):
    assert isinstance(open_federation_store("memory://", "r"), MemoryFederationStore)
    assert isinstance(open_client_store("memory://", "r"), MemoryClientStateStore)
    files = open_client_store(tmp_path.as_uri(), "r")
    assert isinstance(files, FileClientStateStore) and files.root == tmp_path / "r"
    redis_store = open_federation_store("redis://:pw@127.0.0.1:1/0", "r")  # connects lazily
    assert isinstance(redis_store, RedisFederationStore)
    redis_store.close()
    memory = open_federation_store("memory://", "r", log_versions=3, socket_timeout_s=1.0)
    assert isinstance(memory, MemoryFederationStore)  # connection options are ignored
    with pytest.raises(TypeError):
        open_federation_store("memory://", "r", no_such_option=1)
    with pytest.raises(ConfigError):
        open_federation_store("postgres://x", "r")
    with pytest.raises(ConfigError):
        open_client_store("file://host/path", "r")


# --- client state stores ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "file", "redis"])
def client_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClientStateStore]:
    run_id = f"test-{uuid.uuid4().hex}"
    if request.param == "redis":
        _require_redis()
        store: ClientStateStore = RedisClientStateStore(REDIS_URL, run_id)
    elif request.param == "file":
        store = open_client_store(tmp_path.as_uri(), run_id)
    else:
        store = open_client_store("memory://", run_id)
    yield store
    store.delete_all()
    store.close()  # type: ignore[attr-defined]


def test_client_state_is_saved_loaded_and_overwritten(client_store: ClientStateStore):
    # Given
    assert client_store.load(3) is None
    # When
    client_store.save(3, b"\x00model v1\xff")
    client_store.save(4, b"other")
    client_store.save(3, b"model v2")
    # Then
    assert client_store.load(3) == b"model v2"
    assert client_store.load(4) == b"other"
    client_store.delete_all()
    assert client_store.load(3) is None and client_store.load(4) is None


def test_client_state_rejects_non_bytes_and_negative_ids(client_store: ClientStateStore):
    with pytest.raises(TypeError):
        client_store.save(1, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client_store.save(-1, b"x")


def test_file_client_state_leaves_no_temporary_files(tmp_path: Path):
    store = FileClientStateStore(tmp_path / "run")
    for i in range(3):
        store.save(1, b"v%d" % i)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["client-1.bin"]
    store.delete_all()
    assert not (tmp_path / "run").exists()


# --- Redis only: what is read back is validated -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "field", "value", "read"),
    [
        ("cache:entries", b"3", b"\x00" * 7, "snapshot"),  # too short for C classes
        ("cache:entries", b"three", None, "snapshot"),  # not an index
        ("cache:meta", b"version", b"v2", "version"),
        ("cache:log:1", None, b"\xc1", "changes"),  # not msgpack
    ],
)
def test_redis_store_refuses_corrupt_data(key: str, field: bytes | None, value, read: str):
    # Given: one committed round, then one key damaged behind the store's back
    _require_redis()
    store = RedisFederationStore(REDIS_URL, f"test-{uuid.uuid4().hex}")
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        step = _drive_server_cache(rounds=1)[0]
        store.commit_round(0, b"agg", step.update, C)
        full_key = f"scarlet:{store.run_id}:{key}"
        if field is None:
            raw.set(full_key, value)
        else:
            entries = f"scarlet:{store.run_id}:cache:entries"
            good = raw.hget(entries, str(int(step.update.set_indices[0])))
            assert good is not None
            raw.hset(full_key, field, good if value is None else value)
        # When / Then
        with pytest.raises(StateError):
            if read == "snapshot":
                store.cache_snapshot()
            elif read == "version":
                store.cache_version()
            else:
                store.cache_changes_since(0)
    finally:
        store.delete_all()
        store.close()
        raw.close()
