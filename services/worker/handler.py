"""Turn one task delivery into a published upload: decode, run the client, publish, ack.

The order is the at-least-once contract: the upload is published (and confirmed) before
the task is acked, so a crash in between redelivers the task and the aggregator drops the
duplicate upload.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.errors import CacheDesync, ProtocolError
from shared.protocol.codec import DecodeLimits, decode_task, encode_upload
from shared.protocol.messages import SoftLabelUpload, TrainTask
from shared.protocol.routes import uploads_queue
from shared.rounds.client import ClientRuntime
from shared.transport.base import Delivery, Transport

__all__ = ["HandledTask", "handle_delivery"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandledTask:
    """What became of one delivery."""

    task: TrainTask | None
    upload: SoftLabelUpload | None
    upload_bytes: int
    error: str = ""


def handle_delivery(
    delivery: Delivery,
    runtime: ClientRuntime,
    transport: Transport,
    limits: DecodeLimits,
) -> HandledTask:
    """Process one task delivery for ``runtime``.

    A task that does not decode is dead-lettered (it will never decode); a cache desync is
    rejected with requeue so that the caller can resynchronize and see it again.
    """
    try:
        task = decode_task(delivery.body, limits)
    except ProtocolError as e:
        logger.warning("handle: dead-lettering undecodable task: %s", e)
        delivery.reject(requeue=False, reason=str(e)[:200])
        return HandledTask(None, None, 0, error=str(e))
    try:
        upload = runtime.handle(task)
    except CacheDesync as e:
        logger.warning("handle: round=%s client=%s cache desync: %s", task.round, task.client_id, e)
        delivery.reject(requeue=True, reason="cache desync")
        return HandledTask(task, None, 0, error=str(e))
    body = encode_upload(upload)
    transport.publish("", uploads_queue(task.run_id), body, {"kind": "upload"})
    delivery.ack()
    return HandledTask(task, upload, len(body))
