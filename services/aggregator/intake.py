"""One upload body in: decode, classify, record durably, count, then ack.

"Recorded before acked" (DESIGN §3): an accepted upload is written to the store before
its delivery is acked, so a crash in between redelivers it and the store's
``(run, round, client)`` key turns the redelivery into a counted duplicate. A body that
fails validation is dead-lettered with the reason and never reaches the state machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from services.aggregator.observer import RoundObserver
from services.aggregator.progress import RoundProgress
from shared.config import FederationConfig
from shared.errors import ProtocolError
from shared.protocol.codec import DecodeLimits, decode_upload
from shared.protocol.messages import SoftLabelUpload
from shared.rounds.aggregator import AggregatorCore, RoundPhase, UploadOutcome
from shared.security.roles import Identities
from shared.state.base import FederationStore

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
        body: bytes,
        progress: RoundProgress,
        ack: Callable[[], None],
        reject: Callable[..., None],
        sender: str | None = None,
    ) -> str:
        """Handle one delivery; returns the outcome counted.

        Outcomes: ``invalid`` (undecodable), ``forged`` (``sender`` is not the identity
        allowed to upload for the client the upload names), or an upload outcome.
        """
        try:
            upload = decode_upload(body, self.limits)
        except ProtocolError as e:
            logger.warning(
                "collect: round=%s dead-lettering invalid upload: %s", self.core.round, e
            )
            reject(requeue=False, reason=str(e)[:_REASON_CHARS])
            self.observer.upload_dead_lettered()
            return self._count(progress, "invalid", len(body), accepted=False)
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
            reject(requeue=False, reason=f"forged: client {upload.client_id} sent by {sender!r}")
            self.observer.upload_dead_lettered()
            return self._count(progress, "forged", len(body), accepted=False)
        outcome = self.core.classify(upload)
        # durable before acked: a crash after this line redelivers it as a duplicate
        if outcome is UploadOutcome.ACCEPTED and not self.store.record_upload(
            upload.round, upload.client_id, body
        ):
            outcome = UploadOutcome.DUPLICATE
        if outcome is UploadOutcome.ACCEPTED:
            self._admit(upload, len(body), progress)
        ack()
        logger.info("collect: round=%s client=%s %s", upload.round, upload.client_id, outcome)
        accepted = outcome is UploadOutcome.ACCEPTED
        return self._count(progress, outcome.value, len(body), accepted=accepted)

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
