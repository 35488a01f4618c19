"""Value types shared by the domain, the ports and the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"
    INTERNAL = "internal"


class Disposition(StrEnum):
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    FAILED = "failed"
    CONGESTION = "congestion"


class NumberKind(StrEnum):
    """What a dialed or calling number is, as far as policy is concerned."""

    EXTENSION = "extension"  # a desk phone of the PBX
    MOBILE = "mobile"  # KR mobile (010, 011, ...)
    LANDLINE = "landline"  # KR geographic number (02, 031, ...)
    SPECIAL = "special"  # 070, 080, 15xx/16xx, 050 and other non-geographic KR numbers
    INTERNATIONAL = "international"  # a foreign number
    INVALID = "invalid"  # not a number we can call back


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A normalised number: `e164` for external numbers, the digits for extensions."""

    kind: NumberKind
    e164: str  # "+821012345678"; for EXTENSION the extension itself; "" when INVALID
    raw: str  # what the PBX said, before prefix stripping


class LetteringResult(StrEnum):
    """Typed answer of a lettering carrier."""

    DELIVERED = "delivered"
    UNSUPPORTED_DEVICE = "unsupported_device"  # e.g. iOS, or no lettering app: fall back to Alimtalk
    NOT_SUBSCRIBED = "not_subscribed"  # the city has no lettering contract for this subscriber/carrier
    REJECTED = "rejected"  # carrier refused the request (bad text, bad number, policy): do not retry
    TEMPORARY_ERROR = "temporary_error"  # timeout, 5xx, garbage: may be retried


@dataclass(frozen=True, slots=True)
class LetteringRequest:
    """What the gateway asks a carrier to show on the citizen's screen while it rings."""

    call_id: str  # stable per call and PBX; also the carrier-side idempotency reference
    to: str  # E.164 number of the citizen
    caller_number: str  # E.164 of the city's real number shown as caller ID ("" if unknown)
    organisation: str
    department: str
    text: str  # rendered guide text
    extension: str  # the official's desk extension
    pbx: str
    trunk: str = ""


@dataclass(frozen=True, slots=True)
class LetteringOutcome:
    result: LetteringResult
    provider: str
    reference: str = ""  # the carrier's id for the request, when it gives one
    detail: str = ""  # carrier code/message, for logs and audit


@dataclass(frozen=True, slots=True)
class Transfer:
    kind: str  # "blind", "attended", "redirect", "pickup"
    at: float
    to: str  # extension (or number) the external party was moved to


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A finished call as the tracker saw it."""

    pbx: str
    call_id: str
    direction: Direction
    extension: str  # the city official's extension ("" when none was involved)
    party: str  # E.164 of the citizen, or the other extension for internal calls
    party_kind: NumberKind
    disposition: Disposition
    cause: str  # finer detail: "normal", "rejected", "invalid_number", "pbx_restart", ...
    started_at: float
    answered_at: float | None
    ended_at: float
    talk_seconds: float
    trunk: str = ""
    transfers: tuple[Transfer, ...] = field(default=())
    recovered: bool = False  # rebuilt from CoreShowChannels after a reconnect


# ------------------------------------------------------------------ messaging (Alimtalk, SMS)


class SendResult(StrEnum):
    """Typed answer of a messaging provider (Alimtalk, SMS/LMS)."""

    ACCEPTED = "accepted"  # the provider took the message; a delivery report may follow
    NOT_KAKAO_USER = "not_kakao_user"  # no KakaoTalk / not reachable by Alimtalk: SMS can fix it
    BLOCKED = "blocked"  # the citizen blocked the channel or the account is dormant: SMS can fix it
    OPTED_OUT = "opted_out"  # refused at the provider (080 opt-out list): never retry, record it
    INVALID_NUMBER = "invalid_number"
    REJECTED = "rejected"  # permanent: template mismatch, unregistered sender, bad request
    TEMPORARY_ERROR = "temporary_error"  # timeout, 5xx, garbage, rate limit: retry later


@dataclass(frozen=True, slots=True)
class Button:
    """A web-link button of an Alimtalk message."""

    name: str
    url: str


@dataclass(frozen=True, slots=True)
class SmsRequest:
    """An SMS or LMS to one citizen. `text` is already EUC-KR-safe (see domain.smstext)."""

    idempotency_key: str  # stable across retries: the provider must not deliver twice
    to: str  # E.164
    sender: str  # the city's pre-registered sender number, E.164
    text: str
    title: str = ""  # LMS subject; ignored for SMS
    kind: str = "sms"  # "sms" (<= 90 bytes EUC-KR) or "lms" (<= 2,000 bytes)


@dataclass(frozen=True, slots=True)
class AlimtalkRequest:
    """A Kakao Alimtalk message from a pre-approved template, with SMS/LMS fallback (대체발송)."""

    idempotency_key: str
    to: str  # E.164
    template_code: str
    variables: tuple[tuple[str, str], ...]  # template parameters, in template order
    buttons: tuple[Button, ...] = ()
    fallback: SmsRequest | None = None  # sent by the provider when Alimtalk cannot be delivered


@dataclass(frozen=True, slots=True)
class SendOutcome:
    result: SendResult
    provider: str
    reference: str = ""  # the provider's message/request id (delivery reports refer to it)
    detail: str = ""


class ReportStatus(StrEnum):
    """Delivery state of a message, in the order it can only move forward."""

    QUEUED = "queued"
    SENT = "sent"  # handed to the provider
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One delivery report from a provider's webhook."""

    provider: str
    reference: str  # the provider's message id, as in `SendOutcome.reference`
    status: ReportStatus
    at: float  # epoch seconds
    detail: str = ""
    fallback_used: bool = False  # delivered by the SMS/LMS fallback instead of Alimtalk
