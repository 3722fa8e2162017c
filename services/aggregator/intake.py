"""A batch of upload deliveries in: decode, classify, record durably, count, then ack.

"Recorded before acked" (DESIGN §3): the accepted uploads of a batch are written to the
store (one round trip) before any delivery of the batch is acked (one batched ack), so
a crash in between redelivers them and the store's ``(run, round, client)`` key turns
the redeliveries into counted duplicates. A body that fails validation is dead-lettered
with the reason at once, before the batch's ack, and never reaches the state machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from services.aggregator.observer import RoundObserver
from services.aggregator.progress import RoundProgress
from shared.config import FederationConfig
from shared.errors import ProtocolError
from shared.protocol.codec import DecodeLimits, decode_upload
from shared.protocol.messages import SoftLabelUpload
from shared.rounds.aggregator import AggregatorCore, RoundPhase, UploadOutcome
from shared.security.roles import Identities
from shared.state.base import FederationStore
from shared.transport.base import Delivery

__all__ = ["UploadIntake"]

logger = logging.getLogger(__name__)

_REASON_CHARS = 200  # dead-letter reason header


class UploadIntake:
    """Takes upload bodies into the round in progress.

    Args:
        config: the federation configuration.
        core: the round state machine (its open round is the one collected).
        store: where accepted uploads are recorded.
        limits: decoding bounds.
        observer: told of every outcome.
        senders: when given, an upload is taken only from the broker user (AMQP
            ``user_id``) of the client it names, or the pool's in pool mode; any other
            is dead-lettered and counted ``forged``, never recorded.
        worker_mode: ``pinned`` or ``pool`` (whose identity may upload).
    """

    def __init__(
        self,
        config: FederationConfig,
        core: AggregatorCore,
        store: FederationStore,
        limits: DecodeLimits,
        observer: RoundObserver,
        senders: Identities | None = None,
        worker_mode: str = "pinned",
    ) -> None:
        self.config = config
        self.core = core
        self.store = store
        self.limits = limits
        self.observer = observer
        self.senders = senders
        self.worker_mode = worker_mode

    def take(
        self,
        deliveries: Sequence[Delivery],
        progress: RoundProgress,
        ack_all: Callable[[Sequence[Delivery]], None],
    ) -> list[str]:
        """Handle a batch of upload deliveries; returns the outcome counted for each.

        Invalid and forged bodies are dead-lettered one by one as they are met; the
        uploads the round accepts are then recorded in one store round trip, and only
        after it returned are all the others acked in one ``ack_all`` (the transport's
        ``ack_many``). A failed record raises before anything is acked: the broker
        delivers the batch again and the store turns what it had recorded into
        duplicates.

        Outcomes: ``invalid`` (undecodable), ``forged`` (the sender is not the identity
        allowed to upload for the client the upload names), or an upload outcome.
        """
        outcomes: list[str | None] = [None] * len(deliveries)
        taken: list[tuple[int, SoftLabelUpload, UploadOutcome]] = []
        for i, delivery in enumerate(deliveries):
            upload = self._admissible(delivery, progress)
            if isinstance(upload, str):
                outcomes[i] = upload  # dead-lettered and counted
            else:
                taken.append((i, upload, self.core.classify(upload)))
        accepted = [(i, u) for i, u, outcome in taken if outcome is UploadOutcome.ACCEPTED]
        # durable before acked: a crash after this line redelivers them as duplicates
        added = self.store.record_uploads(
            [(u.round, u.client_id, deliveries[i].body) for i, u in accepted]
        )
        fresh = {i for (i, _), new in zip(accepted, added, strict=True) if new}
        for i, upload, outcome in taken:
            if outcome is UploadOutcome.ACCEPTED and i not in fresh:
                outcome = UploadOutcome.DUPLICATE  # recorded before (or earlier in this batch)
            wire = len(deliveries[i].body)
            if outcome is UploadOutcome.ACCEPTED:
                self._admit(upload, wire, progress)
            logger.info("collect: round=%s client=%s %s", upload.round, upload.client_id, outcome)
            accepted_now = outcome is UploadOutcome.ACCEPTED
            outcomes[i] = self._count(progress, outcome.value, wire, accepted=accepted_now)
        # counted before the ack: an upload admitted into the round stays counted even
        # when the ack is lost with the channel (its redelivery counts as a duplicate)
        ack_all([deliveries[i] for i, _, _ in taken])
        return [o for o in outcomes if o is not None]  # every one is set by now

    def _admissible(self, delivery: Delivery, progress: RoundProgress) -> SoftLabelUpload | str:
        """The decoded upload, or the outcome it was dead-lettered with (invalid, forged)."""
        body, sender = delivery.body, delivery.user_id
        try:
            upload = decode_upload(body, self.limits)
        except ProtocolError as e:
            logger.warning(
                "collect: round=%s dead-lettering invalid upload: %s", self.core.round, e
            )
            return self._refuse(delivery, progress, "invalid", str(e)[:_REASON_CHARS])
        if self.senders is not None and not self.senders.upload_sender_ok(
            sender, upload.client_id, self.worker_mode
        ):
            # before classify: a forged upload must not even take the client's slot
            logger.warning(
                "collect: round=%s dead-lettering an upload for client %s sent by %r",
                self.core.round,
                upload.client_id,
                sender,
            )
            reason = f"forged: client {upload.client_id} sent by {sender!r}"
            return self._refuse(delivery, progress, "forged", reason)
        return upload

    def _refuse(
        self, delivery: Delivery, progress: RoundProgress, outcome: str, reason: str
    ) -> str:
        # settled now, before the batch's ack
        delivery.reject(requeue=False, reason=reason)
        self.observer.upload_dead_lettered()
        return self._count(progress, outcome, len(delivery.body), accepted=False)

    def readmit_recorded(self, progress: RoundProgress) -> int:
        """After a restart, accept and count again the uploads the store recorded.

        The checkpoint is saved before collecting begins, so the open round's progress
        holds none of its uploads; the store holds every accepted one (they were
        validated before they were recorded). Bodies that were rejected before the
        restart were never durable and are not counted again. Returns how many.
        """
        if self.core.phase is not RoundPhase.COLLECTING:
            return 0
        recorded = self.store.uploads(self.core.round)
        for client_id in sorted(recorded):
            body = recorded[client_id]
            self._admit(decode_upload(body, self.limits), len(body), progress)
            progress.count_upload(UploadOutcome.ACCEPTED.value)
        return len(recorded)

    def _admit(self, upload: SoftLabelUpload, wire: int, progress: RoundProgress) -> None:
        self.core.accept(upload)
        progress.ledger.add_upload(
            upload,
            wire,
            self.core.num_classes,
            self.config.public_per_round,
            hard=self.config.algorithm == "cfd",
        )
        if not math.isnan(upload.client_accuracy):
            progress.client_accuracies[upload.client_id] = upload.client_accuracy

    def _count(self, progress: RoundProgress, outcome: str, wire: int, *, accepted: bool) -> str:
        if not accepted:
            progress.ledger.add_unaccepted_upload(wire)
            self.observer.upload_refused(outcome, wire)
        progress.count_upload(outcome)
        self.observer.upload_counted(outcome)
        return outcome
