"""Cache-sync RPC messages: round trips, field validation, fuzzing."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import DecodeError, MessageTooLarge, ProtocolError, UnsupportedVersion
from shared.protocol.cache_sync import (
    MAX_ERROR_CHARS,
    CacheSyncRequest,
    CacheSyncResponse,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    encode_sync_response,
    failed_response,
)
from shared.protocol.codec import DecodeLimits
from shared.protocol.routes import reply_queue
from shared.protocol.tensors import encode_tensor

P, C = 50, 4
LIMITS = DecodeLimits(public_size=P, num_classes=C)
RUN = "run-1"
REQUEST_ID = "0123456789abcdef0123456789abcdef"
DIGEST = "ab" * 32


def _labels(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((n, C)) * 3
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _request(since: int | None = 7) -> CacheSyncRequest:
    return CacheSyncRequest(RUN, 3, REQUEST_ID, since, reply_queue(RUN, "worker-3.a"))


def _response(full: bool = False) -> CacheSyncResponse:
    return CacheSyncResponse(
        run_id=RUN,
        request_id=REQUEST_ID,
        version=5,
        digest=DIGEST,
        full=full,
        indices=np.array([1, 4, 9, 30]),
        written=np.array([0, 2, 4, 4]),
        labels=_labels(4),
        cleared=np.empty(0, dtype=np.int64) if full else np.array([2, 49]),
    )


def _assert_responses_equal(a: CacheSyncResponse, b: CacheSyncResponse) -> None:
    assert (a.run_id, a.request_id, a.version, a.digest, a.full, a.error) == (
        b.run_id,
        b.request_id,
        b.version,
        b.digest,
        b.full,
        b.error,
    )
    for name in ("indices", "written", "labels", "cleared"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name


def _mutate(body: bytes, **changes: object) -> bytes:
    msg = msgpack.unpackb(body)
    msg.update(changes)
    packed = msgpack.packb(msg, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def _tensor(values: object, dtype: type = np.int64) -> dict[str, object]:
    return encode_tensor(np.array(values, dtype=dtype))


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("since", [None, 0, 7, 2**40])
def test_a_request_survives_encoding_and_decoding(since: int | None):
    request = _request(since)
    assert decode_sync_request(encode_sync_request(request), LIMITS) == request


@pytest.mark.parametrize("full", [True, False])
def test_a_response_survives_encoding_and_decoding_bit_exactly(full: bool):
    response = _response(full)
    _assert_responses_equal(decode_sync_response(encode_sync_response(response), LIMITS), response)


def test_labels_just_off_the_simplex_are_not_renormalized():
    # Given a row that sums to 1 + 5e-6 (inside tolerance, outside float32 rounding)
    labels = np.array([[0.25, 0.25, 0.25, 0.250005]], dtype=np.float32)
    response = CacheSyncResponse(
        RUN, REQUEST_ID, 1, DIGEST, True, np.array([3]), np.array([0]), labels,
        np.empty(0, dtype=np.int64),
    )  # fmt: skip
    # When / Then: the bits survive (a replica digest depends on them)
    got = decode_sync_response(encode_sync_response(response), LIMITS)
    assert np.array_equal(got.labels, labels)


def test_an_empty_snapshot_survives_encoding_and_decoding():
    empty = np.empty(0, dtype=np.int64)
    response = CacheSyncResponse(
        RUN, REQUEST_ID, 0, DIGEST, True, empty, empty, np.empty((0, C), dtype=np.float32), empty
    )
    _assert_responses_equal(decode_sync_response(encode_sync_response(response), LIMITS), response)


def test_a_failed_response_carries_only_the_error():
    response = failed_response(RUN, REQUEST_ID, "store unavailable: redis down", C)
    got = decode_sync_response(encode_sync_response(response), LIMITS)
    _assert_responses_equal(got, response)
    assert got.error == "store unavailable: redis down" and got.digest == ""


def test_a_failed_response_truncates_a_long_error_and_refuses_an_empty_one():
    assert len(failed_response(RUN, REQUEST_ID, "x" * 5000, C).error) == MAX_ERROR_CHARS
    with pytest.raises(ValueError, match="error text"):
        failed_response(RUN, REQUEST_ID, "", C)


# ---------------------------------------------------------------------- invalid fields

REQUEST_CASES = {
    "run_missing": ({"run": None}, "run"),
    "run_with_colon": ({"run": "a:b"}, "run"),
    "client_negative": ({"client": -1}, "client"),
    "client_bool": ({"client": True}, "client"),
    "request_id_short": ({"request_id": "abc"}, "request_id"),
    "request_id_upper": ({"request_id": REQUEST_ID.upper()}, "request_id"),
    "since_negative": ({"since": -1}, "since"),
    "since_float": ({"since": 1.5}, "since"),
    "reply_to_other_queue": ({"reply_to": "scarlet.run-1.uploads"}, "reply_to"),
    "reply_to_other_run": ({"reply_to": reply_queue("run-2", "w")}, "reply_to"),
    "reply_to_empty_worker": ({"reply_to": reply_queue(RUN, "")}, "reply_to"),
    "reply_to_too_long": ({"reply_to": reply_queue(RUN, "w" * 128) + "x" * 200}, "reply_to"),
    "reply_to_bytes": ({"reply_to": b"scarlet.run-1.reply.w"}, "reply_to"),
    "kind_upload": ({"kind": "upload"}, "kind"),
}


@pytest.mark.parametrize("changes, field", REQUEST_CASES.values(), ids=list(REQUEST_CASES))
def test_an_invalid_request_field_is_refused_by_name(changes: dict[str, object], field: str):
    body = _mutate(encode_sync_request(_request()), **changes)
    with pytest.raises(DecodeError, match=rf"^{field}:"):
        decode_sync_request(body, LIMITS)


RESPONSE_CASES = {
    "request_id_missing": ({"request_id": None}, "request_id"),
    "version_negative": ({"version": -3}, "version"),
    "digest_short": ({"digest": "ab"}, "digest"),
    "digest_upper": ({"digest": "AB" * 32}, "digest"),
    "digest_empty_without_error": ({"digest": ""}, "digest"),
    "full_int": ({"full": 1}, "full"),
    "error_not_str": ({"error": None}, "error"),
    "error_too_long": ({"error": "x" * (MAX_ERROR_CHARS + 1)}, "error"),
    "error_with_entries": ({"error": "store down"}, "error"),
    "indices_out_of_range": ({"indices": _tensor([1, 4, 9, P])}, "indices"),
    "indices_negative": ({"indices": _tensor([-1, 4, 9, 30])}, "indices"),
    "indices_duplicate": ({"indices": _tensor([1, 4, 4, 30])}, "indices"),
    "indices_descending": ({"indices": _tensor([30, 9, 4, 1])}, "indices"),
    "indices_int32": ({"indices": _tensor([1, 4, 9, 30], np.int32)}, "indices"),
    "written_negative": ({"written": _tensor([0, -1, 4, 4])}, "written"),
    "written_wrong_length": ({"written": _tensor([0, 2, 4])}, "written"),
    "labels_wrong_rows": ({"labels": encode_tensor(_labels(3))}, "labels"),
    "labels_wrong_classes": (
        {"labels": encode_tensor(np.full((4, 5), 0.2, dtype=np.float32))},
        "labels",
    ),
    "labels_nan": ({"labels": encode_tensor(np.full((4, C), np.nan, dtype=np.float32))}, "labels"),
    "labels_negative": (
        {"labels": _tensor([[1.5, -0.5, 0.0, 0.0]] * 4, np.float32)},
        "labels",
    ),
    "labels_not_summing_to_one": (
        {"labels": encode_tensor(np.full((4, C), 0.3, dtype=np.float32))},
        "labels",
    ),
    "labels_float16": ({"labels": encode_tensor(_labels(4).astype(np.float16))}, "labels"),
    "labels_bad_bytes": (
        {"labels": {"dtype": "<f4", "shape": [4, C], "data": b"\x00" * 3}},
        "labels",
    ),
    "cleared_overlaps_indices": ({"cleared": _tensor([2, 9])}, "cleared"),
    "cleared_descending": ({"cleared": _tensor([49, 2])}, "cleared"),
    "cleared_out_of_range": ({"cleared": _tensor([2, 500])}, "cleared"),
}


@pytest.mark.parametrize("changes, field", RESPONSE_CASES.values(), ids=list(RESPONSE_CASES))
def test_an_invalid_response_field_is_refused_by_name(changes: dict[str, object], field: str):
    body = _mutate(encode_sync_response(_response()), **changes)
    with pytest.raises(DecodeError, match=rf"^{field}:"):
        decode_sync_response(body, LIMITS)


def test_a_full_snapshot_with_cleared_entries_is_refused():
    body = _mutate(encode_sync_response(_response(full=True)), cleared=_tensor([2]))
    with pytest.raises(DecodeError, match="^cleared: must be empty in a full snapshot"):
        decode_sync_response(body, LIMITS)


def test_an_unknown_schema_version_is_refused():
    with pytest.raises(UnsupportedVersion):
        decode_sync_request(_mutate(encode_sync_request(_request()), v=2), LIMITS)


def test_a_body_over_the_size_limit_is_refused_before_decoding():
    body = encode_sync_response(_response())
    small = DecodeLimits(public_size=P, num_classes=C, max_body_bytes=len(body) - 1)
    with pytest.raises(MessageTooLarge):
        decode_sync_response(body, small)


def test_a_request_is_not_accepted_as_a_response_nor_the_reverse():
    with pytest.raises(DecodeError, match="^kind:"):
        decode_sync_response(encode_sync_request(_request()), LIMITS)
    with pytest.raises(DecodeError, match="^kind:"):
        decode_sync_request(encode_sync_response(_response()), LIMITS)


def test_a_response_for_a_larger_public_set_is_refused_before_allocating():
    body = _mutate(
        encode_sync_response(_response()),
        indices={"dtype": "<i8", "shape": [10**9], "data": b""},
    )
    with pytest.raises(DecodeError, match="^indices: 1000000000 elements exceed"):
        decode_sync_response(body, LIMITS)


# ---------------------------------------------------------------------- fuzzing

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_any(body: bytes) -> None:
    for decode in (decode_sync_request, decode_sync_response):
        with contextlib.suppress(ProtocolError):
            decode(body, LIMITS)


@_FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_errors(body: bytes):
    _decode_any(body)


@_FUZZ
@given(st.data())
def test_byte_flips_and_truncations_of_valid_messages_raise_only_protocol_errors(
    data: st.DataObject,
):
    body = bytearray(
        data.draw(
            st.sampled_from(
                [
                    encode_sync_request(_request()),
                    encode_sync_request(_request(None)),
                    encode_sync_response(_response()),
                    encode_sync_response(_response(full=True)),
                ]
            )
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    _decode_any(bytes(body[:cut]))
    _decode_any(bytes(body))


@_FUZZ
@given(
    st.sampled_from(["request", "response"]),
    st.dictionaries(
        st.sampled_from(
            ["v", "kind", "run", "client", "request_id", "since", "reply_to", "version",
             "digest", "full", "indices", "written", "labels", "cleared", "error", "extra"]
        ),
        _VALUES,
        min_size=1,
        max_size=4,
    ),
)  # fmt: skip
def test_fields_replaced_by_arbitrary_values_raise_only_protocol_errors(
    which: str, changes: dict[str, object]
):
    if which == "request":
        body = _mutate(encode_sync_request(_request()), **changes)
        with contextlib.suppress(ProtocolError):
            decode_sync_request(body, LIMITS)
    else:
        body = _mutate(encode_sync_response(_response()), **changes)
        with contextlib.suppress(ProtocolError):
            decode_sync_response(body, LIMITS)


@_FUZZ
@given(
    st.sampled_from(["indices", "written", "labels", "cleared"]),
    st.sampled_from(["<i8", "<f4", "<f2", "|u1", "<i4", "bogus"]),
    st.lists(st.integers(-(2**40), 2**40), max_size=3),
    st.binary(max_size=96),
)
def test_forged_tensor_maps_raise_only_protocol_errors(
    field: str, dtype: str, shape: list[int], data: bytes
):
    body = _mutate(
        encode_sync_response(_response()), **{field: {"dtype": dtype, "shape": shape, "data": data}}
    )
    with contextlib.suppress(ProtocolError):
        decode_sync_response(body, LIMITS)
