"""THE outbox guard: every message to a citizen passes through it.

Lettering (real time) goes through `Outbox.deliver`; durable messages (post-call content,
Alimtalk, SMS) are admitted by `Outbox.admit` before they are queued and handed to their
provider by `Outbox.send` in a worker. Adapters are called nowhere else.

`Outbox.deliver` checks, in one atomic Redis step shared by every gateway: opt-out,
dedupe per call and action (`SET NX` with TTL, so two gateways following the same PBX
letter each call exactly once) and a per-citizen rate limit; then it calls the adapter
and records the outcome. Adapters are never called around it.

A lettering claim is first a lease, made final once the carrier answered. With a `Liveness`
(every `gateway run`) the lease names this gateway instance, whose heartbeat is in Redis: a
peer finding the lease of an instance whose heartbeat is gone (SIGKILLed, SIGSTOPped) takes
the call over in the claim's own atomic step and letters it while the phone still rings
(about 0.7 s after the death); one that cannot before the ringing ends reports `owner_died`,
never `duplicate`. Both gateways' carrier requests carry the same idempotency key.

If the store cannot be reached the guard fails closed: not sending is always lawful,
sending to a citizen who opted out is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from gateway.domain.models import (
    AlimtalkRequest,
    LetteringOutcome,
    LetteringRequest,
    LetteringResult,
    SendOutcome,
    SendResult,
    SmsRequest,
)
from gateway.domain.numbers import mask
from gateway.errors import StoreUnavailable
from gateway.outbox.liveness import Liveness
from gateway.outbox.providerstats import ProviderStats
from gateway.outbox.store import number_hash
from gateway.ports import AlimtalkProvider, LetteringCarrier, OutboxStore, QueuePut, SentLookup, SmsProvider

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    SENT = "sent"  # the adapter was called; see `outcome`
    DUPLICATE = "duplicate"  # this call/action/recipient was already handled (by us or a peer)
    OPTED_OUT = "opted_out"
    RATE_LIMITED = "rate_limited"
    STORE_UNAVAILABLE = "store_unavailable"
    NO_CARRIER = "no_carrier"  # the rules name a provider the gateway has no adapter for
    INVALID_RECIPIENT = "invalid_recipient"
    KNOWN_NO_LETTERING = "known_no_lettering"  # this phone cannot show lettering: use Alimtalk
    CAPPED = "capped"  # frequency cap (e.g. one post-call message per department per 7 days)
    ADMITTED = "admitted"  # a durable message passed the guard and may be queued
    ALREADY_SENT = "already_sent"  # a redelivered job whose message the provider already accepted
    LEASED = "leased"  # a peer's lease holds this call: it is asking the carrier right now (or died)
    # A peer claimed this call and died (its heartbeat is gone) without settling it, and the phone
    # stopped ringing before this gateway could take it over: whether it was lettered is unknown.
    OWNER_DIED = "owner_died"


# While a live peer's lease holds a ringing call: how often to look whether the phone still rings,
# and how long after the peer's heartbeat would lapse to ask again (the peer renews it meanwhile).
RINGING_CHECK_S = 0.1
HEARTBEAT_MARGIN_S = 0.03
LAPSE_POLL_S = 0.25  # a lease naming no instance (an earlier release): only its lapse frees the call
LEASE_GRACE_S = 0.25  # past the lease's TTL: it has lapsed or been settled


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to one citizen. `action` names what it is, for dedupe and audit."""

    pbx: str
    call_id: str
    action: str  # "lettering", "postcall", "call_notice", "auto_reply:…", "reply:…", "opt_out_confirm:…"
    recipient: str  # E.164
    provider: str
    payload: LetteringRequest
    rate_limit: int = 0  # max messages per recipient per window (0 = no limit)
    rate_window_s: int = 3600
    # The claim is first a lease this long, made final once the carrier answered: a gateway
    # killed between claim and request frees the call for the other gateway (None: final at once).
    lease_s: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    verdict: Verdict
    outcome: LetteringOutcome | None = None
    started: float = 0.0  # perf_counter when the adapter was called (latency measurements)


@dataclass(frozen=True, slots=True)
class Admission:
    """A durable message (post-call content, Alimtalk, SMS) asking to be queued."""

    pbx: str
    call_id: str
    action: str  # "call_notice", "postcall", "sms_fallback", ...
    recipient: str  # E.164
    cap_key: str = ""  # frequency-cap key ("postcall:<department>"), "" for none
    cap_ttl_s: int = 0
    rate_limit: int = 0
    rate_window_s: int = 3600


# The one message an opted-out citizen still gets: the confirmation that the refusal was done.
OPTOUT_CONFIRMATION = "opt_out_confirm"


def optout_exempt(action: str) -> bool:
    return action.startswith(OPTOUT_CONFIRMATION)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message taken off a queue by a worker, ready for its provider."""

    key: str  # idempotency key: the dedupe key of its admission; sent to the provider
    pbx: str
    call_id: str
    action: str
    recipient: str
    provider: str
    alimtalk: AlimtalkRequest | None = None
    sms: SmsRequest | None = None  # with `alimtalk`: the SMS/LMS to queue if Alimtalk cannot reach


FOUND_AT_PROVIDER = "found at provider after an unknown outcome; not sent again"


@runtime_checkable
class AlimtalkLookup(Protocol):
    """An Alimtalk provider that can be asked whether it already took a message (NHN's
    "List messages"): `find_sent` as in `SentLookup`, for an `AlimtalkRequest`."""

    async def find_sent(self, request: AlimtalkRequest, since: float) -> SendOutcome | None: ...


TAKEN_OVER = "taken_over"  # a claim answer, and its count: a dead peer's lettering lease, now ours


class Outbox:
    def __init__(
        self,
        store: OutboxStore,
        carriers: Mapping[str, LetteringCarrier],
        *,
        hash_key: bytes,
        dedupe_ttl_s: int = 6 * 3600,
        alimtalk: Mapping[str, AlimtalkProvider] | None = None,
        sms: Mapping[str, SmsProvider] | None = None,
        device_memory_s: int = 30 * 86400,
        liveness: Liveness | None = None,
    ) -> None:
        self.store = store
        # This gateway instance's heartbeat: with it, lettering leases name the instance and a
        # dead peer's lease is taken over at once (`deliver`); without, a lease is waited out.
        self.liveness = liveness
        self.carriers = dict(carriers)
        self.alimtalk = dict(alimtalk or {})
        self.sms = dict(sms or {})
        self.hash_key = hash_key
        self.dedupe_ttl_s = dedupe_ttl_s
        self.device_memory_s = device_memory_s
        self.counts: dict[str, int] = {}
        self.providers = ProviderStats()  # sends by channel/provider/result; recent error rate
        self._settles: list[tuple[str, int, Mapping[str, Any] | None]] = []
        self._settler: asyncio.Task[None] | None = None

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def key_for(self, pbx: str, call_id: str, action: str, recipient: str) -> str:
        """The dedupe (and provider idempotency) key of one action of one call to one citizen."""
        return self._key(pbx, call_id, action, number_hash(self.hash_key, recipient))

    @staticmethod
    def _key(pbx: str, call_id: str, action: str, recipient_hash: str) -> str:
        return f"{pbx}:{call_id}:{action}:{recipient_hash}"

    # ------------------------------------------------------------ real time: lettering
    async def deliver(self, message: Outgoing, *, ringing: Callable[[], bool] | None = None) -> Delivery:
        """Lettering: guard and send at once (the phone is ringing).

        A lease claim (`message.lease_s`) held by a peer answers LEASED at once without
        `ringing`; with it, the call is watched while the phone rings: the peer settles it
        (DUPLICATE), or dies and this gateway takes it over and letters it, or the phone stops
        ringing first (DUPLICATE while the peer lives, OWNER_DIED when it died)."""
        if not message.recipient.startswith("+"):
            self._count(Verdict.INVALID_RECIPIENT)
            return Delivery(Verdict.INVALID_RECIPIENT)
        carrier = self.carriers.get(message.provider)
        if carrier is None:
            log.error("no adapter for provider %r (call %s)", message.provider, message.call_id)
            self._count(Verdict.NO_CARRIER)
            return Delivery(Verdict.NO_CARRIER)
        recipient_hash = number_hash(self.hash_key, message.recipient)
        dedupe_key = self.key_for(message.pbx, message.call_id, message.action, message.recipient)
        try:
            claim = await self._claim_lettering(message, dedupe_key, recipient_hash)
            if claim.startswith(Verdict.LEASED) and ringing is not None:
                claim = await self._watch_lease(message, dedupe_key, recipient_hash, claim, ringing)
        except StoreUnavailable as exc:
            log.error(
                "outbox store unavailable, %s to %s for call %s not sent: %s",
                message.action,
                mask(message.recipient),
                message.call_id,
                exc,
            )
            self._count(Verdict.STORE_UNAVAILABLE)
            return Delivery(Verdict.STORE_UNAVAILABLE)
        if claim.startswith(TAKEN_OVER):
            self._count(TAKEN_OVER)
            log.warning(
                "%s to %s for call %s: taken over from a gateway that died holding it",
                message.action,
                mask(message.recipient),
                message.call_id,
            )
            claim = "ok" + claim.removeprefix(TAKEN_OVER)  # "ok" or "ok_no_lettering"
        if claim == "ok_no_lettering":
            self._count(Verdict.KNOWN_NO_LETTERING)
            return Delivery(Verdict.KNOWN_NO_LETTERING)
        if claim != "ok":
            verdict = Verdict(claim.partition(":")[0])  # "leased:<ms>" -> LEASED
            log.info(
                "%s to %s for call %s not sent: %s", message.action, mask(message.recipient), message.call_id, verdict
            )
            self._count(verdict)
            return Delivery(verdict)
        started = time.perf_counter()
        outcome = await carrier.letter(message.payload)
        self._count(f"{Verdict.SENT}:{outcome.result}")
        self.providers.record("lettering", outcome.provider, outcome.result)
        log.info(
            "%s to %s for call %s via %s: %s %s",
            message.action,
            mask(message.recipient),
            message.call_id,
            outcome.provider,
            outcome.result,
            outcome.detail,
        )
        if outcome.result is LetteringResult.UNSUPPORTED_DEVICE:
            await self.store.remember_no_lettering(recipient_hash, self.device_memory_s)
        audit = {
            "action": message.action,
            "recipient": recipient_hash,
            "provider": outcome.provider,
            "result": outcome.result,
            "reference": outcome.reference,
            "detail": outcome.detail[:200],
        }
        if message.lease_s is None:
            await self.store.record(dedupe_key=dedupe_key, fields=audit)
        else:
            self._settle_soon(dedupe_key, audit)
        return Delivery(Verdict.SENT, outcome, started)

    async def _claim_lettering(
        self, message: Outgoing, dedupe_key: str, recipient_hash: str, peek: bool = False
    ) -> str:
        """One round trip: a lease naming this instance when its heartbeat is on (a dead peer's
        lease is taken over), else `claim` as before liveness."""
        if self.liveness is not None and message.lease_s is not None:
            return await self.liveness.store.claim_lease(
                dedupe_key=dedupe_key,
                recipient_hash=recipient_hash,
                ttl_s=message.lease_s,
                rate_limit=message.rate_limit,
                rate_window_s=message.rate_window_s,
                owner=self.liveness.instance if self.liveness.beating else "",
                peek=peek,
            )
        return await self.store.claim(
            dedupe_key=dedupe_key,
            recipient_hash=recipient_hash,
            ttl_s=message.lease_s or self.dedupe_ttl_s,
            rate_limit=message.rate_limit,
            rate_window_s=message.rate_window_s,
            check_no_lettering=True,
            lease=message.lease_s is not None,
        )

    async def _watch_lease(
        self, message: Outgoing, dedupe_key: str, recipient_hash: str, claim: str, ringing: Callable[[], bool]
    ) -> str:
        """A peer's lease holds the ringing call: ask again when its heartbeat would lapse
        ("leased:<ms>"; a live peer renews it, a dead one's lease is then taken over), until
        it is settled, taken over, or the phone stops ringing. Bounded by the lease's own TTL
        (its owner settles it or it lapses by then); a live peer still on it is a duplicate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (message.lease_s or 0.0) + LEASE_GRACE_S
        while True:
            _, _, ms = claim.partition(":")
            wake = min(loop.time() + (int(ms) / 1000 + HEARTBEAT_MARGIN_S if ms else LAPSE_POLL_S), deadline)
            while loop.time() < wake:  # the phone may stop ringing meanwhile: looked at often
                if not ringing():
                    break
                await asyncio.sleep(min(RINGING_CHECK_S, max(0.0, wake - loop.time())))
            if not ringing():
                if self.liveness is None:
                    return Verdict.DUPLICATE
                peek = await self._claim_lettering(message, dedupe_key, recipient_hash, peek=True)
                return Verdict.OWNER_DIED if peek == Verdict.OWNER_DIED else Verdict.DUPLICATE
            claim = await self._claim_lettering(message, dedupe_key, recipient_hash)
            if not claim.startswith(Verdict.LEASED):
                return claim
            if loop.time() >= deadline:
                return Verdict.DUPLICATE  # the peer lives and is still on it (or an old lease)

    def _settle_soon(self, dedupe_key: str, audit: Mapping[str, Any]) -> None:
        """Make the lease final and write the audit entry, batched: under a burst of calls the
        letterings that finished meanwhile share one round trip (a lease lasts seconds, the batch
        waits for nothing but the previous one)."""
        self._settles.append((dedupe_key, self.dedupe_ttl_s, audit))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.get_running_loop().create_task(self._settle_batches())

    async def _settle_batches(self) -> None:
        while self._settles:
            batch, self._settles = self._settles, []
            try:
                await self.store.settle_many(batch)
            except StoreUnavailable as exc:  # the leases then lapse: at worst the other gateway letters again
                log.error("could not make %d lettering claim(s) final: %s", len(batch), exc)

    async def flush(self) -> None:
        """Wait for the batched settlements (graceful shutdown, end of a replay)."""
        while self._settler is not None and not self._settler.done():
            await self._settler

    # ------------------------------------------------------- durable: admit, then send
    async def admit(self, admission: Admission, *, then: QueuePut | None = None) -> Verdict:
        """Decide whether a durable message may be queued (opt-out, dedupe, cap, rate limit).

        With `then` (from `Enqueuer.prepare`), an admitted message is queued in the same atomic
        step: never admitted-but-not-queued (a retry would then find it a duplicate)."""
        if not admission.recipient.startswith("+"):
            self._count(Verdict.INVALID_RECIPIENT)
            return Verdict.INVALID_RECIPIENT
        try:
            claim = await self.store.claim(**self._claim_kwargs(admission, then))
        except StoreUnavailable as exc:
            log.error(
                "outbox store unavailable, %s to %s for call %s not queued: %s",
                admission.action,
                mask(admission.recipient),
                admission.call_id,
                exc,
            )
            self._count(Verdict.STORE_UNAVAILABLE)
            return Verdict.STORE_UNAVAILABLE
        return self.verdict_of(claim)

    def verdict_of(self, claim: str) -> Verdict:
        """The verdict for a claim's answer, counted for /metrics."""
        verdict = Verdict.ADMITTED if claim in ("ok", "ok_no_lettering") else Verdict(claim)
        self._count(f"admit:{verdict}")
        return verdict

    def _claim_kwargs(self, admission: Admission, then: QueuePut | None) -> dict[str, Any]:
        recipient_hash = number_hash(self.hash_key, admission.recipient)
        return {
            "dedupe_key": self._key(admission.pbx, admission.call_id, admission.action, recipient_hash),
            "recipient_hash": recipient_hash,
            "ttl_s": self.dedupe_ttl_s,
            "rate_limit": admission.rate_limit,
            "rate_window_s": admission.rate_window_s,
            "cap_key": f"{admission.cap_key}:{recipient_hash}" if admission.cap_key else "",
            "cap_ttl_s": admission.cap_ttl_s,
            "ignore_optout": optout_exempt(admission.action),
            "then": then,
        }

    async def _earlier_attempt(
        self, lookup: SentLookup | AlimtalkLookup, request: Any, message: QueuedMessage
    ) -> SendOutcome | None:
        """What the provider says of an earlier attempt whose outcome was never learnt (an
        attempt marker already set: worker killed mid-request, answer after the deadline); None
        when this is the first attempt or the provider has no such message."""
        previous = await self.store.begin_attempt(idempotency_key=message.key)
        if previous is None:
            return None
        found: SendOutcome | None = await lookup.find_sent(request, previous)
        if found is None:
            log.info(
                "%s to %s for call %s: earlier attempt not at %s, sending",
                message.action,
                mask(message.recipient),
                message.call_id,
                message.provider,
            )
        return found

    async def _already_taken(self, provider: object, request: SmsRequest, message: QueuedMessage) -> SendOutcome | None:
        """For a provider without idempotency keys: was an earlier attempt taken after all?

        An attempt marker with no sent marker means the outcome was never learnt (worker
        killed mid-request, answer after the deadline). If the provider can be asked, ask it:
        found -> the earlier send is the send; cannot tell -> temporary error (retry later)."""
        if not isinstance(provider, SentLookup):
            return None  # idempotent at the provider, or nothing to ask: no marker to keep
        found = await self._earlier_attempt(provider, request, message)
        if found is None:
            return None
        if found.result is SendResult.ACCEPTED:
            return SendOutcome(found.result, found.provider, found.reference, FOUND_AT_PROVIDER)
        return found

    async def _alimtalk_already_taken(
        self, provider: object, request: AlimtalkRequest, message: QueuedMessage
    ) -> SendOutcome | None:
        """As `_already_taken`, for an Alimtalk provider that can be asked. Its idempotency key
        already covers a resend within the provider's window (NHN: 10 minutes), so when the
        provider cannot tell, the message is sent as before (counted), not held back."""
        if not isinstance(provider, AlimtalkLookup):
            return None
        found = await self._earlier_attempt(provider, request, message)
        if found is None:
            return None
        if found.result is SendResult.TEMPORARY_ERROR:
            self._count(f"send:{message.action}:lookup_failed")
            log.warning(
                "%s to %s for call %s: %s cannot tell whether an earlier attempt was taken (%s); "
                "sending with the same idempotency key",
                message.action,
                mask(message.recipient),
                message.call_id,
                message.provider,
                found.detail,
            )
            return None
        if found.result is SendResult.ACCEPTED:
            return SendOutcome(found.result, found.provider, found.reference, FOUND_AT_PROVIDER)
        self._count(f"send:{message.action}:found_at_provider")
        return found

    async def send(self, message: QueuedMessage) -> SendOutcome | Verdict:
        """Hand a queued message to its provider, once: the opt-out is checked again (it may
        have come in while the message waited) and a message the provider already accepted
        (a job redelivered after a crash) is not sent again."""
        recipient_hash = number_hash(self.hash_key, message.recipient)
        status = await self.store.check_send(recipient_hash=recipient_hash, idempotency_key=message.key)
        if status == "opted_out" and optout_exempt(message.action):
            status = "ok"
        if status != "ok":
            verdict = Verdict(status)
            self._count(f"send:{verdict}")
            log.info(
                "%s to %s for call %s not sent: %s", message.action, mask(message.recipient), message.call_id, verdict
            )
            return verdict
        if message.alimtalk is not None:
            provider_a = self.alimtalk.get(message.provider)
            if provider_a is None:
                self._count(Verdict.NO_CARRIER)
                return Verdict.NO_CARRIER
            found = await self._alimtalk_already_taken(provider_a, message.alimtalk, message)
            outcome = found or await provider_a.send_alimtalk(message.alimtalk)
        elif message.sms is not None:
            provider_s = self.sms.get(message.provider)
            if provider_s is None:
                self._count(Verdict.NO_CARRIER)
                return Verdict.NO_CARRIER
            found = await self._already_taken(provider_s, message.sms, message)
            outcome = found or await provider_s.send_sms(message.sms)
        else:
            raise ValueError(f"queued message {message.key} carries nothing to send")
        if outcome.detail == FOUND_AT_PROVIDER:
            self._count(f"send:{message.action}:found_at_provider")
        self._count(f"send:{message.action}:{outcome.result}")
        channel = "alimtalk" if message.alimtalk is not None else (message.sms.kind if message.sms else "?")
        self.providers.record(str(channel), outcome.provider, outcome.result)
        log.info(
            "%s to %s for call %s via %s: %s %s",
            message.action,
            mask(message.recipient),
            message.call_id,
            outcome.provider,
            outcome.result,
            outcome.detail,
        )
        if outcome.result is SendResult.ACCEPTED:
            await self.store.mark_sent(
                idempotency_key=message.key, provider=outcome.provider, reference=outcome.reference
            )
        await self.store.record(
            dedupe_key=message.key,
            fields={
                "action": message.action,
                "recipient": recipient_hash,
                "provider": outcome.provider,
                "result": outcome.result,
                "reference": outcome.reference,
                "detail": outcome.detail[:200],
            },
        )
        return outcome


__all__ = ["Admission", "Delivery", "LetteringResult", "Outbox", "Outgoing", "QueuedMessage", "Verdict"]
