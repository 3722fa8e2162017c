"""Draining the upload queue into the aggregator's state machine."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from shared.errors import ProtocolError
from shared.protocol.codec import DecodeLimits, decode_upload
from shared.protocol.messages import SoftLabelUpload
from shared.rounds.aggregator import AggregatorCore, UploadOutcome
from shared.transport.base import Transport

__all__ = ["collect_uploads"]

logger = logging.getLogger(__name__)

OnUpload = Callable[[SoftLabelUpload | None, UploadOutcome | None, int], None]


def collect_uploads(
    transport: Transport,
    queue: str,
    core: AggregatorCore,
    limits: DecodeLimits,
    *,
    timeout_s: float,
    on_upload: OnUpload | None = None,
) -> Counter[str]:
    """Consume uploads until every sampled client has one accepted, or ``timeout_s`` idles.

    Undecodable bodies are dead-lettered (``invalid``); everything else is acked once the
    state machine has recorded it, duplicates and late uploads included.

    Args:
        transport: where uploads arrive.
        queue: the upload queue.
        core: the aggregator state machine (COLLECTING).
        limits: decoder limits.
        timeout_s: give up after this long without a delivery.
        on_upload: called with (upload or None, outcome or None, body size) per delivery.

    Returns:
        Counts per outcome (``accepted``, ``duplicate``, ``late``, ``rejected``, ``invalid``).
    """
    counts: Counter[str] = Counter()
    while core.missing():
        delivery = transport.get(queue, timeout_s=timeout_s)
        if delivery is None:
            break
        size = len(delivery.body)
        try:
            upload = decode_upload(delivery.body, limits)
        except ProtocolError as e:
            logger.warning("collect: round=%s dead-lettering invalid upload: %s", core.round, e)
            delivery.reject(requeue=False, reason=str(e)[:200])
            counts["invalid"] += 1
            if on_upload is not None:
                on_upload(None, None, size)
            continue
        outcome = core.accept(upload)
        delivery.ack()
        counts[outcome.value] += 1
        if on_upload is not None:
            on_upload(upload, outcome, size)
    return counts
