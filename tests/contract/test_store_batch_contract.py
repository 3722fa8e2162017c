"""Batched upload records, on memory:// and on the local Redis (the store contract's fixture).

``record_uploads`` is what the aggregator writes a batch of deliveries with before it
acks them together: it must answer exactly as the same ``record_upload`` calls in order.
"""

from __future__ import annotations

import pytest

from tests.contract.test_store_contract import StoreFactory, make_store  # noqa: F401


def test_record_uploads_answers_as_single_records_in_order(make_store: StoreFactory):  # noqa: F811
    # Given one upload already recorded
    store = make_store()
    assert store.record_upload(2, 1, b"first")
    # When a batch repeats it, adds two, and repeats one of its own
    added = store.record_uploads(
        [(2, 1, b"again"), (2, 4, b"\x00four\xff"), (2, 5, b"five"), (2, 4, b"dup"), (3, 4, b"r3")]
    )
    # Then
    assert added == [False, True, True, False, True]
    assert store.uploads(2) == {1: b"first", 4: b"\x00four\xff", 5: b"five"}
    assert store.uploads(3) == {4: b"r3"}
    assert store.record_uploads([]) == []


def test_record_uploads_checks_every_item_before_writing_any(make_store: StoreFactory):  # noqa: F811
    store = make_store()
    with pytest.raises(ValueError):
        store.record_uploads([(0, 1, b"ok"), (0, -1, b"bad client")])
    with pytest.raises(TypeError):
        store.record_uploads([(0, 1, b"ok"), (0, 2, "not bytes")])  # type: ignore[list-item]
    assert store.uploads(0) == {}
