"""THE outbox guard: the one function every message to a citizen passes through.

`Outbox.deliver` checks, in one atomic Redis step shared by every gateway: opt-out,
dedupe per call and action (`SET NX` with TTL, so two gateways following the same PBX
letter each call exactly once) and a per-citizen rate limit; then it calls the adapter
and records the outcome. Adapters are never called around it.

If the store cannot be reached the guard fails closed: not sending is always lawful,
sending to a citizen who opted out is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.domain.models import LetteringOutcome, LetteringRequest, LetteringResult
from gateway.domain.numbers import mask
from gateway.errors import StoreUnavailable
from gateway.ports import LetteringCarrier, OutboxStore
from gateway.store import number_hash

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    SENT = "sent"  # the adapter was called; see `outcome`
    DUPLICATE = "duplicate"  # this call/action/recipient was already handled (by us or a peer)
    OPTED_OUT = "opted_out"
    RATE_LIMITED = "rate_limited"
    STORE_UNAVAILABLE = "store_unavailable"
    NO_CARRIER = "no_carrier"  # the rules name a provider the gateway has no adapter for
    INVALID_RECIPIENT = "invalid_recipient"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to one citizen. `action` names what it is, for dedupe and audit."""

    pbx: str
    call_id: str
    action: str  # "lettering" (later: "postcall", "alimtalk", "sms", "reply")
    recipient: str  # E.164
    provider: str
    payload: LetteringRequest
    rate_limit: int = 0  # max messages per recipient per window (0 = no limit)
    rate_window_s: int = 3600


@dataclass(frozen=True, slots=True)
class Delivery:
    verdict: Verdict
    outcome: LetteringOutcome | None = None
    started: float = 0.0  # perf_counter when the adapter was called (latency measurements)


class Outbox:
    def __init__(self, store: OutboxStore, carriers: Mapping[str, LetteringCarrier], *,
                 hash_key: bytes, dedupe_ttl_s: int = 6 * 3600) -> None:
        self.store = store
        self.carriers = dict(carriers)
        self.hash_key = hash_key
        self.dedupe_ttl_s = dedupe_ttl_s
        self.counts: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    async def deliver(self, message: Outgoing) -> Delivery:
        if not message.recipient.startswith("+"):
            self._count(Verdict.INVALID_RECIPIENT)
            return Delivery(Verdict.INVALID_RECIPIENT)
        carrier = self.carriers.get(message.provider)
        if carrier is None:
            log.error("no adapter for provider %r (call %s)", message.provider, message.call_id)
            self._count(Verdict.NO_CARRIER)
            return Delivery(Verdict.NO_CARRIER)
        recipient_hash = number_hash(self.hash_key, message.recipient)
        dedupe_key = f"{message.pbx}:{message.call_id}:{message.action}:{recipient_hash}"
        try:
            claim = await self.store.claim(dedupe_key=dedupe_key, recipient_hash=recipient_hash,
                                           ttl_s=self.dedupe_ttl_s, rate_limit=message.rate_limit,
                                           rate_window_s=message.rate_window_s)
        except StoreUnavailable as exc:
            log.error("outbox store unavailable, %s to %s for call %s not sent: %s", message.action,
                      mask(message.recipient), message.call_id, exc)
            self._count(Verdict.STORE_UNAVAILABLE)
            return Delivery(Verdict.STORE_UNAVAILABLE)
        if claim != "ok":
            verdict = Verdict(claim)
            log.info("%s to %s for call %s not sent: %s", message.action, mask(message.recipient),
                     message.call_id, verdict)
            self._count(verdict)
            return Delivery(verdict)
        started = time.perf_counter()
        outcome = await carrier.letter(message.payload)
        self._count(f"{Verdict.SENT}:{outcome.result}")
        log.info("%s to %s for call %s via %s: %s %s", message.action, mask(message.recipient),
                 message.call_id, outcome.provider, outcome.result, outcome.detail)
        await self.store.record(dedupe_key=dedupe_key, fields={
            "action": message.action, "recipient": recipient_hash, "provider": outcome.provider,
            "result": outcome.result, "reference": outcome.reference, "detail": outcome.detail[:200],
        })
        return Delivery(Verdict.SENT, outcome, started)


__all__ = ["Delivery", "LetteringResult", "Outbox", "Outgoing", "Verdict"]
