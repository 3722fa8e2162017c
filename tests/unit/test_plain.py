"""Dataclasses to plain msgpack data and back, from their annotations."""

import math
from dataclasses import dataclass, field
from enum import StrEnum

import msgpack
import numpy as np
import pytest

from shared.accounting import ByteLedger
from shared.arrays import AnyArray, IndexArray
from shared.cache_policy import CacheCommit
from shared.errors import DecodeError
from shared.protocol.messages import DistillTargets
from shared.protocol.plain import from_plain, to_plain


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    name: str
    weights: AnyArray


@dataclass
class Outer:
    count: int
    ratio: float
    flag: bool
    blob: bytes
    colour: Colour
    inner: Inner | None
    ids: tuple[int, ...]
    pair: tuple[str, int]
    items: list[Inner] = field(default_factory=list)
    by_client: dict[int, float] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)


def _roundtrip(cls, value):
    packed = msgpack.packb(to_plain(value), use_bin_type=True)
    return from_plain(cls, msgpack.unpackb(packed, raw=False))


def _outer() -> Outer:
    return Outer(
        count=3,
        ratio=0.25,
        flag=True,
        blob=b"\x00\xff",
        colour=Colour.BLUE,
        inner=Inner("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ids=(4, 1, 9),
        pair=("x", 2),
        items=[Inner("b", np.array([1, 2], dtype=np.int64))],
        by_client={7: 0.5, 2: math.nan},
        by_name={"accepted": 3},
    )


def test_a_nested_dataclass_survives_msgpack_field_for_field():
    # Given
    original = _outer()
    # When
    back = _roundtrip(Outer, original)
    # Then
    assert back.count == 3 and back.ratio == 0.25 and back.flag is True
    assert back.blob == b"\x00\xff" and back.colour is Colour.BLUE
    assert back.ids == (4, 1, 9) and back.pair == ("x", 2)
    assert back.inner is not None and np.array_equal(back.inner.weights, original.inner.weights)
    assert back.inner.weights.dtype == np.float32
    assert back.items[0].weights.dtype == np.int64
    assert back.by_client[7] == 0.5 and math.isnan(back.by_client[2])
    assert back.by_name == {"accepted": 3}


def test_protocol_and_cache_records_round_trip():
    rng = np.random.default_rng(0)
    targets = DistillTargets(3, np.array([5, 1]), None, rng.random((2, 4), dtype=np.float32))
    back = _roundtrip(DistillTargets, targets)
    assert back.round == 3 and back.signals is None
    assert np.array_equal(back.indices, targets.indices)
    assert np.array_equal(back.fresh_labels, targets.fresh_labels)
    commit = CacheCommit(
        2,
        np.array([1, 2]),
        np.array([1, 0]),
        rng.random((2, 3), dtype=np.float32),
        rng.random((1, 3), dtype=np.float32),
        np.array([-1, 0]),
        np.zeros((2, 3), dtype=np.float32),
    )
    assert np.array_equal(_roundtrip(CacheCommit, commit).previous_written, commit.previous_written)


def test_a_ledger_round_trips_with_its_counts():
    ledger = ByteLedger()
    ledger.up.add(wire=10, paper=20, baseline=30, labels=4)
    ledger.add_unaccepted_upload(7)
    assert _roundtrip(ByteLedger, ledger) == ledger


def test_an_integral_float_stays_a_float_and_an_int_is_widened():
    back = from_plain(Outer, {**to_plain(_outer()), "ratio": 2})
    assert isinstance(back.ratio, float) and back.ratio == 2.0


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("count", "3", "Outer.count"),
        ("count", True, "Outer.count"),
        ("flag", 1, "Outer.flag"),
        ("colour", "green", "Outer.colour"),
        ("ids", 5, "Outer.ids"),
        ("pair", ["x"], "Outer.pair"),
        ("by_client", {"seven": 1.0}, "Outer.by_client"),
        ("inner", {"name": "a"}, "Outer.inner"),
        ("inner", {"name": "a", "weights": {"dtype": "<c8", "shape": [1], "data": b""}}, "weights"),
    ],
)
def test_a_value_that_does_not_fit_its_annotation_is_refused_naming_the_field(key, value, where):
    data = to_plain(_outer())
    assert isinstance(data, dict)
    data[key] = value
    with pytest.raises(DecodeError, match=where.replace(".", r"\.")):
        from_plain(Outer, data)


def test_missing_or_unknown_fields_are_refused():
    data = to_plain(_outer())
    assert isinstance(data, dict)
    with pytest.raises(DecodeError, match="expected the fields"):
        from_plain(Outer, {k: v for k, v in data.items() if k != "count"})
    with pytest.raises(DecodeError, match="expected the fields"):
        from_plain(Outer, {**data, "extra": 1})


def test_a_field_with_a_default_may_be_absent_and_takes_its_default():
    # state written before the field was added still loads
    data = to_plain(_outer())
    assert isinstance(data, dict)
    got = from_plain(Outer, {k: v for k, v in data.items() if k != "items"})
    assert got.items == [] and got.count == 3 and got.by_name == {"accepted": 3}


def test_unsupported_values_are_a_programming_error():
    with pytest.raises(TypeError):
        to_plain(object())


@dataclass(frozen=True)
class Rounds:
    written: IndexArray


def test_an_array_of_another_dtype_than_its_annotation_is_refused():
    blob = to_plain(Rounds(np.array([1.0, 2.0], dtype=np.float32)))
    with pytest.raises(DecodeError, match="dtype float32, expected int64"):
        from_plain(Rounds, blob)
